"""Connecting to Ray: the cluster of a `ray job submit`, or a local one started here."""

from __future__ import annotations

import os

# Ray Train notices finished or failed workers by polling; its 2 s default adds
# seconds to every fit, which dominates short runs and tests.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def connect() -> str:
    """Join the cluster named by RAY_ADDRESS (set inside `ray job submit`), or start a local Ray.

    Without RAY_ADDRESS a fresh local Ray is started even if another one runs on this
    machine: Ray's own default would join whatever cluster it last recorded, and hang
    when that one is gone. `RAY_ADDRESS=auto` joins a cluster started with `ray start`.
    Returns a short description for the log. The local dashboard binds to 127.0.0.1.
    """
    import ray  # ray: imported on connecting, so that parsing a config needs no Ray (the GPU check runs without it)

    if ray.is_initialized():
        return "already connected"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return f"cluster at {os.environ['RAY_ADDRESS']}"
    ray.init(address="local", dashboard_host="127.0.0.1", log_to_driver=True)
    return "local Ray started for this run"


def cluster_cpus() -> float:
    import ray  # ray: as in connect

    return ray.cluster_resources().get("CPU", 0.0)
