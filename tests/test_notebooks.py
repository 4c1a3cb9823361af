"""The notebooks run end to end on a tiny synthetic corpus and show what they were given.

One module-scoped pipeline: synthesize (RAVDESS layout, 4 speakers x 4 emotions x 2 takes) ->
``run_prepare`` (handcrafted94) -> ``run_cv`` (logreg, speaker-kfold, 2 folds) -> a 2-trial
``run_sweep`` (grid over C, FIFO, one report per fold). Then each notebook is executed by
nbclient in a kernel of *this* interpreter (a kernelspec installed into a temp JUPYTER_PATH, so
a user- or system-wide ``python3`` kernel cannot stand in for the venv), with SER_RAY_PREPARED,
SER_RAY_CV and SER_RAY_SWEEP pointing at the folders made here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

from ser_ray.config import LearnConfig, PrepareConfig, from_dict
from ser_ray.learn.data import load_features
from ser_ray.learn.experiment import run_cv
from ser_ray.prepare import run_prepare
from ser_ray.synth import synthesize_corpus
from ser_ray.learn.tuning import SweepSpace, run_sweep

pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "ser-ray-test-venv"
EMOTIONS = ["neutral", "happy", "sad", "angry"]
LEARN = {"features": ["handcrafted94"], "model": "logreg", "protocol": "speaker-kfold", "folds": 2}


@pytest.fixture(scope="module")
def outputs(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("notebooks")
    synthesize_corpus("ravdess", root / "corpus", n_speakers=4, per_emotion=2, emotions=EMOTIONS,
                      sr=16000, seed=0)
    prepared = root / "prepared"
    summary = run_prepare(from_dict(PrepareConfig, {
        "inputs": [str(root / "corpus")], "output": str(prepared), "corpus": "ravdess",
        "features": ["handcrafted94"], "files_per_task": 16}), progress=False)
    cfg = from_dict(LearnConfig, LEARN)
    metrics = run_cv(load_features(prepared, cfg.features), cfg, root / "cv")
    space = SweepSpace(base=LEARN, space={"model_options.C": {"choice": [0.1, 1.0]}},
                       search="grid", num_samples=1, scheduler="fifo", export_best=False)
    run_sweep([str(prepared)], space, root / "tune", resume=False)
    best = json.loads((root / "tune" / "best.json").read_text())
    return {"root": root, "prepared": prepared, "summary": summary, "metrics": metrics,
            "best": best}


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernelspec for sys.executable, found first through JUPYTER_PATH."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name=KERNEL, display_name="ser-ray test (venv)", prefix=str(prefix))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
        assert spec.argv[0] == sys.executable, spec.argv
        yield KERNEL


def execute(name: str, kernel_name: str, env: dict[str, str],
            monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    """Run notebooks/<name>.ipynb (a cell error fails the test); return (text outputs, images)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name=kernel_name,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    texts, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", out
            if out["output_type"] == "stream":
                texts.append(out["text"])
            elif "data" in out:
                texts.append(out["data"].get("text/plain", ""))
                images += "image/png" in out["data"]
    return "\n".join(texts), images


def test_exploration(outputs, kernel, monkeypatch):
    text, images = execute("exploration", kernel,
                           {"SER_RAY_PREPARED": str(outputs["prepared"])}, monkeypatch)
    n = outputs["summary"]["ok"]
    assert n == 4 * len(EMOTIONS) * 2
    assert f"{n} utterances, 4 speakers" in text
    assert f"{n} rows of handcrafted94" in text
    assert "spectral centroid (Hz)" in text
    assert images >= 3  # class balance, durations, feature by sex and emotion
    for label in EMOTIONS:
        assert label in text


def test_results(outputs, kernel, monkeypatch):
    m, best = outputs["metrics"], outputs["best"]
    text, images = execute("results", kernel, {
        "SER_RAY_CV": str(outputs["root"] / "cv"),
        "SER_RAY_SWEEP": str(outputs["root"] / "tune")}, monkeypatch)
    assert f"UA {m['ua_mean']:.3f} ± {m['ua_std']:.3f}" in text
    assert f"WA {m['wa_mean']:.3f} ± {m['wa_std']:.3f}" in text
    assert "speaker-kfold" in text and "fold1" in text
    assert "2 trial(s), 2 complete" in text
    assert f"best trial {best['trial_id']}: ua_mean = {best['value']:.3f}" in text
    assert images >= 2  # confusion matrix, sweep bars
    assert "NOTE" not in text


def test_results_without_folders(tmp_path, kernel, monkeypatch):
    text, images = execute("results", kernel, {"SER_RAY_CV": str(tmp_path / "no-cv"),
                                               "SER_RAY_SWEEP": str(tmp_path / "no-tune")},
                           monkeypatch)
    assert "NOTE: no cv report" in text and "NOTE: no sweep" in text
    assert images == 0
