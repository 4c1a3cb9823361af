"""cluster.yaml is a valid Ray cluster-launcher config and says what the project needs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _validate(config: dict) -> dict:
    """Ray's own checks, as `ray up` runs them before it touches AWS: merge the provider defaults
    (prepare_config), then validate_config (ray-schema.json plus consistency checks)."""
    prepared = prepare_config(copy.deepcopy(config))  # it mutates its input
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_validation(config):
    prepared = _validate(config)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"] == "us-east-1"
    # The merge must not have replaced our node types with the defaults' ones.
    assert set(prepared["available_node_types"]) == set(config["available_node_types"])


def _node(c: dict, name: str) -> dict:
    return c["available_node_types"][name]


BREAKAGES = {
    "top-level-typo": lambda c: c.update(setup_command=[]),
    "node-type-typo": lambda c: _node(c, "gpu_worker").update(min_worker=1),
    "non-int-resource": lambda c: _node(c, "gpu_worker")["resources"].update(GPU="1"),
    "bad-head-type": lambda c: c.update(head_node_type="nope"),
    "no-node-config": lambda c: _node(c, "cpu_worker").pop("node_config"),
    "min-above-global-max": lambda c: _node(c, "cpu_worker").update(min_workers=13),
}


@pytest.mark.parametrize("breakage", BREAKAGES.values(), ids=BREAKAGES.keys())
def test_validation_rejects_broken_configs(config, breakage):
    broken = copy.deepcopy(config)
    breakage(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _validate(broken)


def test_node_types(config):
    types = config["available_node_types"]
    assert config["cluster_name"] == "ser-ray"
    assert set(types) == {"head", "cpu_worker", "gpu_worker"}
    assert config["head_node_type"] == "head"
    assert types["head"]["node_config"]["InstanceType"] == "m6i.2xlarge"

    cpu, gpu = types["cpu_worker"], types["gpu_worker"]
    assert cpu["node_config"]["InstanceType"] == "c6i.4xlarge"
    assert (cpu["min_workers"], cpu["max_workers"]) == (0, 8)
    assert "GPU" not in cpu["resources"]
    assert gpu["node_config"]["InstanceType"] == "g5.xlarge"
    assert (gpu["min_workers"], gpu["max_workers"]) == (0, 4)
    assert gpu["resources"]["GPU"] == 1
    assert config["max_workers"] >= cpu["max_workers"] + gpu["max_workers"]

    amis = {t["node_config"]["ImageId"] for t in types.values()}
    assert len(amis) == 1 and next(iter(amis)).startswith("ami-")


def _torch_and_install(commands: list[str]) -> tuple[str, int, int]:
    torch_at = next(i for i, c in enumerate(commands) if "pip install torch==2.13.0" in c)
    install_at = next(i for i, c in enumerate(commands) if re.search(r"pip install -e \.(\s|$)", c))
    return commands[torch_at], torch_at, install_at


def test_setup_installs_pinned_torch_first_cpu_and_cuda(config):
    cpu_torch, t, i = _torch_and_install(config["setup_commands"])
    assert t < i
    assert "whl/cpu" in cpu_torch

    # The gpu type's own list replaces the global one in Ray: it must be a full install.
    gpu_cmds = config["available_node_types"]["gpu_worker"]["worker_setup_commands"]
    gpu_torch, t, i = _torch_and_install(gpu_cmds)
    assert t < i
    assert "whl/cpu" not in gpu_torch and "--index-url" not in gpu_torch
    assert any("cuda.is_available()" in c and "assert" in c for c in gpu_cmds)
    assert gpu_cmds[0] == config["setup_commands"][0]  # same venv step


def test_repo_mounted_and_ray_started_from_its_venv(config):
    assert config["file_mounts"] == {"~/ser-ray": "."}
    assert ".venv" in config["rsync_exclude"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("~/ser-ray/.venv/bin/activate" in c for c in starts)
    assert any("--head" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


def test_every_install_warms_up_librosa_kernels_before_workers_start(config):
    # Concurrent first compiles by several workers can corrupt librosa's numba cache (see
    # ser_ray/warmup.py): each node compiles it once, right after installing.
    for cmds in (config["setup_commands"],
                 config["available_node_types"]["gpu_worker"]["worker_setup_commands"]):
        install_at = next(i for i, c in enumerate(cmds) if "pip install -e ." in c)
        warm_at = next(i for i, c in enumerate(cmds) if "-m ser_ray.features.warmup" in c)
        assert warm_at > install_at
