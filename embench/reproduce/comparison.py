"""The comparison of finished cells: per dataset and defense, seeds pooled, as JSON, markdown and a plot."""

from __future__ import annotations

from pathlib import Path

from embench.errors import EmbenchError
from embench.files import now, read_json, write_json_atomic
from embench.hashing import sha256_file
from embench.layout import CELL_FILE, COMPARISON_STEM, RESULTS_FILE
from embench.metrics import format_estimate, pool_estimates
from embench.reproduce.plan import BASE_DEFENSE, Cell, ReproducePlan
from embench.results import EM_RATE, IN_DOMAIN_RATE, INCOHERENT_RATE, OOD, ScoreResults

METRICS = {  # name -> (column label, what it is)
    "general_em": ("general EM %", "misaligned % pooled over the suite's ood tasks (each task's misaligned rule)"),
    "general_incoherent": ("general incoherent %",
                           "incoherent % pooled over the suite's ood tasks (each task's incoherent rule)"),
    "in_domain_misaligned": ("in-domain misaligned %",
                             "misaligned % on the dataset's own probe (its in_domain_misaligned rule)"),
    "in_domain_incoherent": ("in-domain incoherent %", "incoherent % on the dataset's own probe (its incoherent rule)"),
    "benign_accuracy": ("benign accuracy %", "exact-match accuracy on the benign task"),
}
INTERVALS = ("Wilson 95% intervals over the samples of every seed pooled (seed-to-seed variation is not in them); "
             "null: no usable sample (the excluded counts say why), never 0")


def _finished_cells(plan: ReproducePlan) -> list[Cell]:
    """Every finished cell under the output folder (earlier runs' selections included), in the preset's order."""
    datasets = {dataset.name: dataset for dataset in plan.preset.datasets}
    order = [defense.name for defense in plan.preset.defenses]
    cells = []
    for marker in sorted((plan.out / "cells").glob(f"*/*/seed-*/{CELL_FILE}")):
        record = read_json(marker, f"the {CELL_FILE} of a finished `embench reproduce` cell")
        try:
            cells.append(Cell(dataset=datasets[record["dataset"]], defense=record["defense"], seed=int(record["seed"]),
                              folder=marker.parent))
        except (KeyError, TypeError, ValueError):
            raise EmbenchError(f"{marker}: not the record of a cell of this preset (dataset, defense, seed): delete "
                               f"{marker.parent} to run that cell again") from None
    dataset_order = list(datasets)
    return sorted(cells, key=lambda c: (dataset_order.index(c.dataset.name),
                                        order.index(c.defense) if c.defense in order else len(order), c.defense,
                                        c.seed))


def cell_metrics(results: ScoreResults, probe: str | None, benign: str | None) -> dict[str, list[dict]]:
    """The parts each comparison metric pools, from one ``results.json``: the ood tasks' rates (the headline
    EM rate's parts), the dataset's own probe, the benign task."""
    ood, probes = results.tasks_of(OOD), [probe] if probe else []
    return {
        "general_em": results.parts(EM_RATE, ood),
        "general_incoherent": results.parts(INCOHERENT_RATE, ood),
        "in_domain_misaligned": results.parts(IN_DOMAIN_RATE, probes),
        "in_domain_incoherent": results.parts(INCOHERENT_RATE, probes),
        "benign_accuracy": [results.results[benign]] if benign and "accuracy" in results.results.get(benign, {})
        else [],
    }


def _pool(parts: list[dict]) -> dict | None:
    pooled = pool_estimates(parts)
    return None if pooled is None else pooled.model_dump()


def comparison_rows(plan: ReproducePlan) -> tuple[list[dict], list[dict]]:
    """(rows per dataset and defense, seeds pooled, the base model first; one row per finished cell)."""

    def results_of(cell: Cell) -> ScoreResults:
        path = cell.score_dir / RESULTS_FILE
        if not path.is_file():
            raise EmbenchError(f"{cell.marker} says {cell.label} is finished, but {path} is missing: delete "
                               f"{cell.marker} to run the cell again")
        return ScoreResults.load(path)

    cells = _finished_cells(plan)
    base = results_of(plan.base) if plan.base.finished else None
    rows, cell_rows = [], []
    for dataset in plan.preset.datasets:
        probe = plan.probes[dataset.name]
        groups: dict[str, list[tuple[Cell, dict]]] = {}
        if base is not None:
            groups[BASE_DEFENSE] = [(plan.base, cell_metrics(base, probe, plan.benign))]
        for cell in cells:
            if cell.dataset.name == dataset.name:
                parts = cell_metrics(results_of(cell), probe, plan.benign)
                groups.setdefault(cell.defense, []).append((cell, parts))
                cell_rows.append({"cell": cell.label, "dataset": dataset.name, "defense": cell.defense,
                                  "seed": cell.seed, "folder": cell.folder.relative_to(plan.out).as_posix(),
                                  **{name: _pool(value) for name, value in parts.items()}})
        for defense, members in groups.items():
            rows.append({"dataset": dataset.name, "probe": probe, "defense": defense,
                         "seeds": [cell.seed for cell, _ in members if cell.seed is not None],
                         **{name: _pool([part for _, parts in members for part in parts[name]]) for name in METRICS}})
    return rows, cell_rows


def write_comparison(plan: ReproducePlan) -> list[Path]:
    """``comparison.json``, ``.md`` and ``.png`` over every finished cell; returns their paths."""
    rows, cell_rows = comparison_rows(plan)
    paths = [plan.out / f"{COMPARISON_STEM}.{suffix}" for suffix in ("json", "md", "png")]
    board = plan.board
    write_json_atomic(paths[0], {
        "preset": {"id": plan.preset.id, "version": plan.preset.version, "sha256": sha256_file(plan.preset_path)},
        "suite": {key: plan.suite[key] for key in ("id", "version", "tasks")},
        "judge": plan.score.model_dump(include={"judge_model", "judge_base_url", "judge_mode", "judge_engine"}),
        "metrics": {name: description for name, (_, description) in METRICS.items()}, "intervals": INTERVALS, "leaderboard": board.relative_to(plan.out).as_posix(),
        "updated": now(), "rows": rows, "cells": cell_rows})
    paths[1].write_text(comparison_markdown(plan, rows), encoding="utf-8")
    _plot(rows, paths[2])
    return paths


def comparison_markdown(plan: ReproducePlan, rows: list[dict]) -> str:
    judge = plan.score.judge_model or "the judges' default model"
    lines = [f"# embench reproduce: preset {plan.preset.id} v{plan.preset.version}", "",
             f"Model {plan.preset.model}; suite `{plan.suite['id']}` ({', '.join(task.id for task in plan.tasks)}); "
             f"judge {judge}{' at ' + plan.score.judge_base_url if plan.score.judge_base_url else ''}. "
             f"Percentages with {INTERVALS}; '-': the dataset has no such task.", ""]
    for dataset in plan.preset.datasets:
        probe = plan.probes[dataset.name]
        lines += [f"## {dataset.name} ({dataset.data}; in-domain probe: {probe or 'none'})", "",
                  "| defense | seeds | " + " | ".join(label for label, _ in METRICS.values()) + " |",
                  "|---" * (len(METRICS) + 2) + "|"]
        for row in rows:
            if row["dataset"] == dataset.name:
                seeds = ", ".join(map(str, row["seeds"])) or "-"
                lines.append(f"| {row['defense']} | {seeds} | "
                             + " | ".join(format_estimate(row[name]) for name in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    """One panel per metric, one row per dataset and defense: the value with its 95% interval, or 'null'."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI or servers
    import matplotlib.pyplot as plt

    labels = [f"{row['dataset']}: {row['defense']}" for row in rows]
    figure, axes = plt.subplots(1, len(METRICS), sharey=True, squeeze=False,
                                figsize=(3.2 * len(METRICS) + 2, max(2.5, 0.35 * len(rows) + 1.5)))
    for axis, name in zip(axes[0], METRICS):
        for position, row in enumerate(rows):
            estimate = row[name]
            if estimate is None or estimate["value"] is None:
                text = format_estimate(estimate)
                axis.text(0.02, position, text, va="center", fontsize=7, color="grey")
                continue
            value, lower, upper = (100 * estimate[key] for key in ("value", "lower", "upper"))
            axis.errorbar(value, position, xerr=[[value - lower], [upper - value]], fmt="o", capsize=3,
                          color="black" if row["defense"] == BASE_DEFENSE else "tab:blue")
        axis.set(xlim=(-2, 102), title=METRICS[name][0], xlabel="with its 95% interval")
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(rows)), labels, fontsize=8)
    axes[0][0].invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
