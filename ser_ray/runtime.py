"""Ray start-up shared by every job: join a cluster when there is one, else start a local one."""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (set by ``ray job submit``) or start local Ray.

    The local default binds to 127.0.0.1 so a laptop or CI box needs no network set-up.
    """
    import ray

    if ray.is_initialized():
        return
    quiet = {"log_to_driver": True, "include_dashboard": False}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=num_cpus, **quiet)
    from ser_ray.console import hook_ray

    hook_ray()  # a quiet run: what the workers print goes to the log file
