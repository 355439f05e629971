"""Run a config in Flower's simulation engine, in this process (``fedwsa run``, ``compare``).

fedwsa starts Ray itself before handing over to Flower (whose Ray backend then reuses it):
so it can join an existing Ray cluster (``ray_address``), start no more of Ray than the
simulation uses (no dashboard, no runtime environment), and put its own SIGINT/SIGTERM
handlers (``fedwsa.stop``) over the one ``ray.init`` installs, which would end the process in
the middle of a round.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from fedwsa import stop
from fedwsa.config import Config


def simulate(config: Config, num_supernodes: int = 1, num_gpus: float = 0.0,
             cpus_per_node: int | None = None, ray_address: str | None = None) -> Path:
    """Run ``config`` in-process with Flower's simulation engine; returns the run directory.

    Each node gets ``cpus_per_node`` CPUs (default: the machine's CPUs shared out over the
    nodes). Ray gives a node's process that many torch threads. The batched trainer's CPU
    results do not depend on it (its ops run single-threaded, one worker thread per CPU); the
    sequential trainer's are bit-identical only between runs with the same thread count.
    """
    from flwr.simulation import run_simulation

    from fedwsa.clients.client_app import app as client_app
    from fedwsa.results.rundir import default_run_dir
    from fedwsa.server.app import make_server_app

    if not config.run_dir:
        config = config.replace(run_dir=str(default_run_dir(config)))
    with ray_session(ray_address):
        run_simulation(
            server_app=make_server_app(config),
            client_app=client_app,
            num_supernodes=num_supernodes,
            backend_config=_backend(num_supernodes, num_gpus, cpus_per_node),
        )
    return Path(config.run_dir)


def simulate_cells(configs: list[Config], num_supernodes: int = 1, num_gpus: float = 0.0,
                   cpus_per_node: int | None = None, ray_address: str | None = None
                   ) -> dict[str, str | None]:
    """Run ``configs`` (each with its ``run-dir``) together as ONE federation in Flower's
    simulation engine: one start-up, one Message per node and round for all of them.

    Returns run directory -> None for a run that went through, or why it failed (the others
    went on).
    """
    from flwr.simulation import run_simulation

    from fedwsa.clients.client_app import app as client_app
    from fedwsa.server.app import make_cells_app

    outcome: dict[str, str | None] = {}
    with ray_session(ray_address):
        run_simulation(
            server_app=make_cells_app(configs, outcome),
            client_app=client_app,
            num_supernodes=num_supernodes,
            backend_config=_backend(num_supernodes, num_gpus, cpus_per_node),
        )
    return outcome


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Ray started (or joined, at ``address``) for one simulation, with SIGINT/SIGTERM asking
    the run to stop at its next round (``fedwsa.stop``); Ray is shut down after it.

    What Flower's Ray backend would do (``RayBackend.init_ray``), minus what fedwsa does not
    use: no dashboard, and no ``runtime_env`` (Flower passes the driver's ``sys.path`` as
    PYTHONPATH in one, which starts Ray's runtime-env machinery per worker); here the same
    PYTHONPATH goes into the environment that a local Ray's workers inherit. On a cluster
    (``address``, or Ray's own ``RAY_ADDRESS``) fedwsa must be installed on every host.
    """
    import ray

    if not ray.is_initialized():
        parts = [*sys.path, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in parts if p))
        joining = address or os.environ.get("RAY_ADDRESS")
        # Ray refuses start-up options (the dashboard's) when it joins a running cluster.
        local = {} if joining else {"include_dashboard": False}
        ray.init(address=address, logging_level="WARNING", log_to_driver=True, **local)
    try:
        with stop.on_signals():
            yield
    finally:
        ray.shutdown()


def _backend(num_supernodes: int, num_gpus: float, cpus_per_node: int | None
             ) -> dict[str, dict[str, float]]:
    cpus = cpus_per_node or (
        max(1, (os.cpu_count() or 1) // max(1, num_supernodes)) if num_gpus == 0 else 1)
    return {"client_resources": {"num_cpus": cpus, "num_gpus": num_gpus}}
