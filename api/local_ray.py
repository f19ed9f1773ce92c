"""Ray for ``engine serve --ray``, examples/ray_serve.py and the tests: the cluster that RAY_ADDRESS
names, or else a Ray instance of this machine's own with every port on 127.0.0.1.

Ray swaps a 127.0.0.1 node address for a routable one and listens on every interface unless its
single-machine mode is on. That mode is an environment switch which Ray reads once, when it is first
imported, so it is set here before ``import ray``, and the address Ray reports is checked after."""

from __future__ import annotations

import os
import sys
from typing import Any

SINGLE_MACHINE_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's one-machine mode, on loopback
LOCAL_RAY_ENV = {SINGLE_MACHINE_SWITCH: "0", "RAY_USAGE_STATS_ENABLED": "0"}  # to set before ray's first import


def init_ray(**ray_init_kwargs: Any) -> str:
    """Join the Ray cluster that RAY_ADDRESS names, or else start a local Ray bound to 127.0.0.1 (usage
    stats off, no dashboard); returns the GCS address."""
    if os.environ.get("RAY_ADDRESS"):
        import ray

        return ray.init(**ray_init_kwargs).address_info["gcs_address"]
    if "ray" not in sys.modules:
        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
    import ray

    context = ray.init(address="local", include_dashboard=False, **ray_init_kwargs)
    address = context.address_info["gcs_address"]
    if not address.startswith("127.0.0.1:"):
        ray.shutdown()
        raise RuntimeError(f"Ray listens on {address}, not on loopback: ray was imported before init_ray, "
                           f"or {SINGLE_MACHINE_SWITCH} is set to 1")
    return address
