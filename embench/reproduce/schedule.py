"""``embench reproduce --plan --gpus N``: how a preset's cells would spread over N GPUs, before anything runs.

The estimate replays what ``--executor ray`` does: cells are submitted in the plan's order (the base model first)
and each starts on the first slot that frees up, a slot being the GPUs one cell takes (its engine's tensor x
pipeline x data parallel size) on one node. Per-cell costs are the mean of the cells already finished in the
output folder (measured on the machine that ran them) or given on the command line.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from embench.errors import EmbenchError
from embench.files import read_json
from embench.reproduce.plan import ReproducePlan


@dataclass(frozen=True)
class CellCosts:
    """Hours of one trained cell (training plus scoring) and of scoring alone (the base model's whole cost)."""

    cell_hours: float
    score_hours: float
    source: str


@dataclass(frozen=True)
class Schedule:
    gpus: int
    nodes: int
    slots: int  # cells at once
    waves: int  # the most cells one slot runs in turn
    wall_hours: float
    gpu_hours: float

    @property
    def utilization(self) -> float:
        """Share of the GPUs' time spent on cells (the rest idles while the last wave finishes)."""
        return self.gpu_hours / (self.gpus * self.wall_hours) if self.wall_hours else 0.0


def cell_costs(plan: ReproducePlan, cell_hours: float | None, score_hours: float | None) -> CellCosts:
    """The given costs; else the mean of the finished cells' recorded train and score times."""
    if cell_hours is not None or score_hours is not None:
        if cell_hours is None or score_hours is None:
            raise EmbenchError("--cell-hours and --score-hours go together (one trained cell's train + score, and "
                               "one score alone)")
        if not 0 < score_hours <= cell_hours or not math.isfinite(cell_hours):
            raise EmbenchError("--cell-hours and --score-hours must be finite, above 0, and a cell's hours at least "
                               "its score's")
        return CellCosts(cell_hours, score_hours, "given")
    records = [read_json(cell.marker, "a cell's marker") for cell in [plan.base, *plan.cells] if cell.finished]
    scores = [record["score"]["seconds"] for record in records]
    trains = [record["train"]["seconds"] for record in records if record.get("train")]
    if not scores or not trains:
        raise EmbenchError(f"{plan.out} holds no finished trained cell to measure per-cell costs from: give "
                           "--cell-hours (one cell's train + score) and --score-hours (one score)")
    score = sum(scores) / len(scores) / 3600
    return CellCosts(sum(trains) / len(trains) / 3600 + score, score,
                     f"measured: mean of {len(records)} finished cell(s) in {plan.out}")


def schedule(plan: ReproducePlan, costs: CellCosts, gpus: int, gpus_per_node: int) -> Schedule:
    """The plan's cells (the base model and every trained cell, finished or not) on ``gpus`` GPUs."""
    per_cell = plan.score.gpus_per_cell
    if gpus < 1 or gpus_per_node < 1:
        raise EmbenchError("--gpus and --gpus-per-node must be at least 1")
    nodes, rest = divmod(gpus, gpus_per_node)
    slots = nodes * (gpus_per_node // per_cell) + rest // per_cell
    if slots == 0:
        raise EmbenchError(f"a cell takes {per_cell} GPUs on one node (tensor x pipeline x data parallel) and no node "
                           f"of {min(gpus, gpus_per_node)} GPU(s) holds one")
    free = [(0.0, slot, 0) for slot in range(slots)]  # (free at, slot, cells run), earliest first
    for hours in [costs.score_hours] + [costs.cell_hours] * len(plan.cells):
        at, slot, count = heapq.heappop(free)
        heapq.heappush(free, (at + hours, slot, count + 1))
    gpu_hours = (costs.score_hours + costs.cell_hours * len(plan.cells)) * per_cell
    return Schedule(gpus=gpus, nodes=nodes + (rest > 0), slots=slots, waves=max(count for *_, count in free),
                    wall_hours=max(at for at, *_ in free), gpu_hours=gpu_hours)
