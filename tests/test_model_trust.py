"""A model folder never runs code when it is loaded (ser_ray/artifact.py, docs/guide.md
"Guarantees"): crafted folders whose loading would write a marker file are refused, the
marker never appears, and the error says why."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest

from ser_ray.models.artifact import SKOPS_TYPES, UntrustedModel, load_predictor, save_model_dir
from ser_ray.models import available_models, build_model

LABELS = ["angry", "happy", "neutral", "sad"]
FEATURES = {"features": ["handcrafted94"], "extractors": {}, "audio": {"sample_rate": 16000}}


class _Marker:
    """Unpickling (or a skops load of) this writes ``path``: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _vectors():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(LABELS)), 12)
    return (rng.normal(0, 1, (len(y), 5)) + y[:, None]).astype(np.float32), y


def _classical(path, name="logreg"):
    X, y = _vectors()
    return save_model_dir(path, model_name=name, model_config={}, input_shape=(5,), labels=LABELS,
                          model=build_model(name, (5,), len(LABELS)).fit(X, y),
                          feature_config=FEATURES)


def _meta(path, **change):
    meta = json.loads((path / "model.json").read_text())
    (path / "model.json").write_text(json.dumps({**meta, **change}))


@pytest.mark.parametrize("name", available_models("classical"))
def test_every_classical_model_is_saved_as_skops_and_loads_untrusted(tmp_path, name):
    X, _ = _vectors()
    out = _classical(tmp_path / name, name)
    assert (out / "model.skops").is_file() and not (out / "model.joblib").exists()
    assert not (out / "model.skops").read_bytes().startswith(b"\x80")  # a zip, not a pickle
    loaded = load_predictor(out)  # every type it holds is in SKOPS_TYPES or skops' defaults
    assert loaded.predict_proba(X).shape == (len(X), len(LABELS))


def test_a_pickle_posing_as_a_classical_model_never_runs(tmp_path):
    out = _classical(tmp_path / "m")
    (out / "model.skops").unlink()
    marker = tmp_path / "pwned"
    (out / "model.joblib").write_bytes(pickle.dumps(_Marker(marker)))
    _meta(out, weights="model.joblib")  # what an old ser-ray wrote
    with pytest.raises(UntrustedModel, match="pickle.*--trust-model"):
        load_predictor(out)
    assert not marker.exists()
    try:  # trusted, it is unpickled: the flag means what it says
        load_predictor(out, trust=True)
    except Exception:
        pass
    assert marker.exists()


@pytest.mark.parametrize("weights", ["../evil.pkl", "/tmp/evil.pkl", "model.joblib"])
def test_the_weights_name_in_model_json_is_never_followed(tmp_path, weights):
    """A folder that looks like a torch model, with kind/weights pointing at a pickle."""
    out = _classical(tmp_path / "m")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Marker(marker)))
    _meta(out, weights=weights)
    with pytest.raises(UntrustedModel, match=r"names weights .*model\.skops"):
        load_predictor(out)
    _meta(out, name="cnn1d", kind="classical", weights="model.skops")  # kind from the registry
    with pytest.raises(UntrustedModel, match="kind 'classical' but model 'cnn1d' is a torch"):
        load_predictor(out)
    assert not marker.exists()


def test_links_and_code_files_in_a_model_folder_are_refused(tmp_path):
    out = _classical(tmp_path / "m")
    os.symlink(tmp_path / "elsewhere.json", out / "extra.json")
    with pytest.raises(UntrustedModel, match="extra.json is a link"):
        load_predictor(out)
    (out / "extra.json").unlink()
    (out / "backbone").mkdir()
    (out / "backbone" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UntrustedModel, match="pytorch_model.bin is a pickle/code file"):
        load_predictor(out)


def test_a_skops_file_with_a_foreign_type_is_refused(tmp_path):
    import skops.io

    out = _classical(tmp_path / "m")
    marker = tmp_path / "pwned"
    skops.io.dump({"model": _Marker(marker)}, out / "model.skops")
    with pytest.raises(UntrustedModel, match="types no ser-ray model uses"):
        load_predictor(out)
    assert not marker.exists()
    assert all(t.startswith("sklearn.") for t in SKOPS_TYPES)


def test_late_fusion_members_live_inside_the_folder(tmp_path):
    from ser_ray.models.late_fusion import load_late_fusion, save_late_fusion

    a, b = _classical(tmp_path / "a"), _classical(tmp_path / "b", "knn")
    fused = save_late_fusion([a, b], tmp_path / "fused")
    assert len(load_late_fusion(fused).members) == 2
    spec = json.loads((fused / "fusion.json").read_text())
    for member in (str(a), "../a", "members/0/../../../a"):
        (fused / "fusion.json").write_text(json.dumps({**spec, "members": [member, "members/1"]}))
        with pytest.raises(UntrustedModel, match="not members/0"):
            load_late_fusion(fused)
    (fused / "fusion.json").write_text(json.dumps(spec))
    shutil.rmtree(fused / "members" / "0")
    os.symlink(a, fused / "members" / "0")
    with pytest.raises(UntrustedModel, match="is a link"):
        load_late_fusion(fused)


@pytest.mark.parametrize("command", ["evaluate", "score"])
def test_commands_refuse_a_crafted_folder_before_any_work(tmp_path, command):
    from cli_helpers import ser_ray_cli

    out = _classical(tmp_path / "m")
    (out / "model.skops").unlink()
    marker = tmp_path / "pwned"
    (out / "model.joblib").write_bytes(pickle.dumps(_Marker(marker)))
    _meta(out, weights="model.joblib")
    args = {"evaluate": ["--features", str(tmp_path)],
            "score": ["--input", str(tmp_path), "--run-date", "2026-12-01"]}[command]
    r = ser_ray_cli(command, "--model", str(out), *args, "--output", str(tmp_path / "o"),
                    check=False, needs_ray=False)
    assert r.returncode != 0 and "--trust-model" in r.stderr and not marker.exists()
