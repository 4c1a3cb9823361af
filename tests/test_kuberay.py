"""deploy/kuberay/ manifests and the Dockerfile: each manifest parses, is a KubeRay resource of
the Ray version the project pins, runs the image the Dockerfile builds, and its entrypoint
names a job in jobs/ with arguments that job's command accepts and resolves to a config."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "deploy" / "kuberay").glob("*.yaml"))
NIGHT = "2026-11-22"


def _entrypoint(doc: dict) -> str:
    spec = doc["spec"]
    job = spec["jobTemplate"] if doc["kind"] == "RayCronJob" else spec
    return job["entrypoint"], job


def _command(entrypoint: str) -> list[str]:
    """The job's argv: a ``bash -c '...'`` wrapper's date variable set to one night."""
    argv = shlex.split(entrypoint)
    if argv[:2] == ["bash", "-c"]:
        script = argv[2]
        assign = re.match(r"\s*(\w+)=\$\(date [^)]*\);\s*", script)
        if assign:
            script = script[assign.end():].replace(f"${assign.group(1)}", NIGHT)
        argv = shlex.split(script)
    return argv


def test_every_manifest_is_checked():
    kinds = sorted(yaml.safe_load(p.read_text())["kind"] for p in MANIFESTS)
    assert kinds == ["RayCronJob", "RayJob", "RayJob"]


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_entrypoint_runs_a_job_with_arguments_it_accepts(path):
    import ray

    from ser_ray import cli

    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    entrypoint, job = _entrypoint(doc)
    cluster = job["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    images = {c["image"] for g in pods for c in g["template"]["spec"]["containers"]}
    assert images and all(re.fullmatch(r".+/ser-ray:(cpu|gpu)", i) for i in images), images
    argv = _command(entrypoint)
    assert argv[0] == "python" and argv[1].startswith("/opt/ser-ray/jobs/"), argv
    script = ROOT / "jobs" / Path(argv[1]).name
    assert script.is_file(), f"{argv[1]} is not in jobs/"
    command = re.search(r'main\(\["(\w+)"', script.read_text()).group(1)
    args = cli.build_parser().parse_args([command, *argv[2:]])
    if command == "score":
        cfg = cli.score_config(args)  # every --set key resolves
        assert cfg.run_date == NIGHT and NIGHT in cfg.inputs[0]
    elif command == "tune":
        from ser_ray.learn.tuning import load_space

        load_space(ROOT / Path(args.space).relative_to("/opt/ser-ray"))
    if "gpu" in " ".join(images):
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for g in pods
                for c in g["template"]["spec"]["containers"]]
        assert any(gpus), "a GPU image on pods that ask for no GPU"


def test_dockerfile_builds_both_variants_with_the_project_pins():
    text = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    import ray

    assert f"ARG RAY_VERSION={ray.__version__}" in text
    assert "FROM base-${VARIANT}" in text and "AS base-cpu" in text and "AS base-gpu" in text
    for pin in ("torch==2.13.0", "torchvision==0.28.0"):
        assert pin in text and f'"{pin}"' in pyproject, pin
    for folder in ("ser_ray", "jobs", "configs"):
        assert f"COPY {folder} {folder}" in text
