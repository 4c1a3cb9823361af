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
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # A cluster on this machine's loopback: join as 127.0.0.1, not the host's address.
        loopback = address.split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost")
        ray.init(address=address, log_to_driver=True,
                 **({"_node_ip_address": "127.0.0.1"} if loopback else {}))
    else:
        ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=num_cpus, **quiet)
    from ser_ray.console import hook_ray

    hook_ray()  # a quiet run: what the workers print goes to the log file
