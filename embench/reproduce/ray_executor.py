"""``embench reproduce --executor ray``: every unfinished cell's training and scoring as one Ray task.

What is assumed of the cluster: every node runs the same embench install, mounts the reproduction folder (and the
preset's files) at the same path, and finds the model (``EMBENCH_HOME``, the Hugging Face cache) as the driver
does. The driver, the process holding the reproduction folder's lock, is the only writer of the board and of the
cells' markers: a task returns its record, the driver publishes it and writes the marker. A task is never retried
by Ray: a worker or node that dies leaves its cell without a marker, the driver carries on with the others, and
the next run resumes that cell from its checkpoints and finished samples, on whichever node it lands.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from embench.errors import EmbenchError
from embench.layout import RESULTS_FILE
from embench.progress import Status
from embench.reproduce.plan import Cell, ReproducePlan

# Set on the driver, needed the same in every task: model and cache locations, offline mode, engine settings,
# the judge's key (the tasks' environment is the raylet's, not the driver's).
FORWARDED_PREFIXES = ("EMBENCH_", "HF_", "TRANSFORMERS_", "VLLM_", "OPENAI_")
CellDone = Callable[[Cell, dict[str, Any], float], None]


def ray_module():
    try:
        import ray
    except ImportError:
        raise EmbenchError("--executor ray needs Ray: pip install 'embench[ray]'") from None
    return ray


def forwarded_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.startswith(FORWARDED_PREFIXES)}


def cell_resources(cluster: dict[str, float], plan: ReproducePlan) -> dict[str, float]:
    """A cell's task: the GPUs its engine's parallel settings take where the cluster has GPUs, CPU cores otherwise."""
    gpus = plan.score.gpus_per_cell
    if cluster.get("GPU", 0) > 0:
        return {"num_gpus": gpus, "num_cpus": plan.spec.cpus_per_cell}
    if gpus > 1:
        raise EmbenchError(f"the preset's engine takes {gpus} GPUs a cell (tensor x pipeline x data parallel) and "
                           "the Ray cluster has none")
    return {"num_gpus": 0, "num_cpus": plan.spec.cpus_per_cell}


def _check_fits(ray, resources: dict[str, float]) -> None:
    """A cell that fits no node would wait forever in Ray's queue: refused now instead."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if not any(node.get("CPU", 0) >= resources["num_cpus"] and node.get("GPU", 0) >= resources["num_gpus"]
               for node in nodes):
        largest = max(((node.get("CPU", 0), node.get("GPU", 0)) for node in nodes), default=(0, 0))
        raise EmbenchError(f"no node of the Ray cluster has the {resources['num_cpus']:g} CPU(s) and "
                           f"{resources['num_gpus']:g} GPU(s) a cell takes (the largest has {largest[0]:g} and "
                           f"{largest[1]:g}): lower --cpus-per-cell or add nodes")


def _reproduce_cell(plan: ReproducePlan, cell: Cell) -> tuple[dict[str, Any], float]:
    """The Ray task: a cell trained and scored, its record noting the node; what the libraries print goes to the
    worker's log in Ray's session folder."""
    from embench.reproduce.matrix import train_and_score

    started = time.perf_counter()
    record = train_and_score(plan, cell, lambda text, done, total: None)
    record["executor"] = {"name": "ray", "node": socket.gethostname()}
    return record, time.perf_counter() - started


def _one_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None)  # a RayTaskError carries the task's own exception
    shown = cause if isinstance(cause, BaseException) else error
    text = " ".join(str(shown).split()) or type(shown).__name__
    return f"{type(shown).__name__}: {text[:300]}"


def run_cells_on_ray(plan: ReproducePlan, cells: list[Cell], finish: CellDone, say: Status) -> dict[str, str]:
    """Run ``cells`` as Ray tasks, calling ``finish`` for each as it completes; the cells that failed, with why."""
    if not cells:
        return {}
    ray = ray_module()
    try:
        ray.init(address=plan.spec.address, runtime_env={"env_vars": forwarded_environment()},
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise EmbenchError(f"cannot start or join the Ray cluster{' at ' + plan.spec.address if plan.spec.address else ''}: "
                           f"{_one_line(error)}") from None
    try:
        resources = cell_resources(ray.cluster_resources(), plan)
        _check_fits(ray, resources)
        task = ray.remote(_reproduce_cell)
        pending = {task.options(name=f"embench cell {cell.label}", max_retries=0, **resources).remote(plan, cell): cell
                   for cell in cells}
        failed: dict[str, str] = {}
        while pending:
            say(f"Ray: {len(pending)} cell(s) running or queued", len(cells) - len(pending), len(cells))
            [ready], _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready)
            try:
                record, seconds = ray.get(ready)
            except ray.exceptions.RayError as error:
                failed[cell.label] = _one_line(error)
                continue
            if not (cell.score_dir / RESULTS_FILE).is_file():
                failed[cell.label] = (f"finished on {record['executor']['node']}, but {cell.score_dir / RESULTS_FILE} "
                                      "is not on this machine: the reproduction folder must be on a filesystem every "
                                      "node shares")
                continue
            finish(cell, record, seconds)
        return failed
    finally:
        ray.shutdown()
