"""The ``judges`` commands: list, show, render, validate, add, calibrate, train."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from embench.api import JudgeOptions
from embench.cli._ui import JUDGE_OPTIONS, JudgesDir, _registry, console, grouped, with_progress

judges_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Judges: list, show, render, validate, add, calibrate, train.")


@judges_app.command("list")
def judges_list_command(judges_dir: Optional[Path] = JudgesDir) -> None:
    """Every judge found, with version, kind, verdicts and template hash."""
    registry = _registry(judges_dir)
    table = Table()
    for column in ("id", "version", "higher means", "verdicts", "template sha256", "file"):
        table.add_column(column, overflow="fold")
    for spec in registry.specs():
        table.add_row(spec.id, str(spec.version), spec.higher_means, ", ".join(spec.verdicts) or "-",
                      spec.computed_sha256[:12], registry.path_of(spec).name)
    console.print(table)


@judges_app.command("show")
def judges_show_command(judge: str, judges_dir: Optional[Path] = JudgesDir) -> None:
    """A judge's definition and template."""
    from embench.judges.spec import dump_judge

    console.print(dump_judge(_registry(judges_dir).get(judge)), markup=False, highlight=False, soft_wrap=True)


@judges_app.command("render")
def judges_render_command(judge: str, question: str = typer.Option(..., "--question"),
                          answer: str = typer.Option(..., "--answer"),
                          system: Optional[str] = typer.Option(None, "--system"),
                          reasoning: Optional[str] = typer.Option(None, "--reasoning"),
                          judges_dir: Optional[Path] = JudgesDir) -> None:
    """The exact prompt a judge would receive for one question and answer, byte for byte (UTF-8, then a newline)."""
    spec = _registry(judges_dir).get(judge)
    prompt = spec.render(question=question, answer=answer, system=system, reasoning=reasoning)
    # Straight to stdout's bytes: a console would expand tabs, drop carriage returns and wrap lines.
    sys.stdout.buffer.write(prompt.encode("utf-8", "surrogateescape") + b"\n")
    sys.stdout.flush()


@judges_app.command("validate")
def judges_validate_command(file: Path) -> None:
    """Check a judge file: schema, sandboxed template, declared = used variables, a sample render."""
    from embench.judges import load_judge_file

    spec = load_judge_file(file)
    console.print(f"ok: {spec.key} (template sha256 {spec.computed_sha256})", soft_wrap=True)


@judges_app.command("add")
def judges_add_command(file: Path, to: Optional[Path] = typer.Option(
        None, "--to", help="Install into this folder (e.g. judges/) instead of $EMBENCH_HOME/judges.")) -> None:
    """Validate a judge file and install it, recording its template hash."""
    from embench.judges import load_judge_file, register

    spec = load_judge_file(file)
    target = register(spec, to=to)
    console.print(f"added {spec.key} -> {target}", soft_wrap=True)


@judges_app.command("calibrate")
@grouped
def judges_calibrate_command(
    judge: str = typer.Argument(..., help="Judge id (or id@version) to calibrate."),
    options: JudgeOptions = JUDGE_OPTIONS,
    calibration_set: Optional[Path] = typer.Option(None, "--set", help="Calibration JSONL (default: judges/calibration/<id>.jsonl)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Judge only the first N items of the set."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report JSON (default: ./calibration-<id>-v<version>.json)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env"),
    concurrency: int = typer.Option(32, "--concurrency", help="Judge requests in flight (endpoints)."),
    judges_dir: Optional[Path] = JudgesDir,
) -> None:
    """Judge a labelled calibration set and report AUROC, Spearman, verdict accuracy, nulls and injection shift."""
    from embench.api import CalibrateSpec, run_calibration

    prepared = CalibrateSpec(judge_ref=judge, calibration_set=calibration_set, limit=limit, out=out,
                             judges_dir=judges_dir,
                             judge=replace(options, api_key_env=api_key_env, concurrency=concurrency)).prepare()
    spec, mode = prepared.spec, prepared.settings.mode
    started = time.monotonic()
    report = with_progress("starting judge", lambda status: run_calibration(prepared, progress=lambda done, total: status(
        f"calibrating {spec.key} ({mode})", done, total)))
    _print_calibration(report, len(prepared.items), time.monotonic() - started, prepared.report_path)


def _print_calibration(report, items: int, elapsed: float, report_path: Path) -> None:
    from embench.judges.scoring import MIN_NUMBER_MASS

    def number(value: Optional[float], digits: int = 3) -> str:
        return "null" if value is None else f"{value:.{digits}f}"

    metrics = report.metrics
    table = Table(title=f"calibration of {report.judge['judge_id']}@{report.judge['judge_version']} "
                        f"({report.judge['mode']}, {report.judge['judge_model']})")
    for column in ("metric", "value", "data"):
        table.add_column(column, overflow="fold")
    table.add_row("AUROC", number(metrics.auroc),
                  f"{metrics.auroc_positive} positive ({report.positive}) vs {metrics.auroc_negative} negative "
                  f"({report.negative}); {metrics.auroc_excluded_null} null left out")
    table.add_row("Spearman", number(metrics.spearman), f"{metrics.spearman_n} items with score and {report.label_field}")
    table.add_row("verdict accuracy", number(metrics.verdict_accuracy), f"{metrics.verdict_n} items expecting a verdict")
    table.add_row("false verdict rate", number(metrics.false_verdict_rate),
                  f"{metrics.false_verdict_n} items expecting a score")
    table.add_row("null share", number(metrics.null_share),
                  f"{metrics.null_count} null, {metrics.scored_count} scored, {metrics.failed_count} failed")
    table.add_row("mean valid mass", number(metrics.mean_valid_mass),
                  f"probability on valid outputs (a score needs >= {MIN_NUMBER_MASS} on numbers)")
    table.add_row("injection shift", number(metrics.injection_shift, 1), f"{metrics.injection_pairs} pairs")
    console.print(table)
    categories = Table(title="per category")
    for column in ("category", "n", "scored", "mean score", "mean valid mass", "verdicts"):
        categories.add_column(column)
    for category, stats in metrics.per_category.items():
        verdicts = ", ".join(f"{word} {count}" for word, count in sorted(stats.verdicts.items())) or "-"
        categories.add_row(category, str(stats.n), str(stats.scored), number(stats.mean_score, 1),
                           number(stats.mean_valid_mass), verdicts)
    console.print(categories)
    console.print(f"{items} items in {elapsed:.1f} s; report -> [cyan]{report_path}[/]", soft_wrap=True)


@judges_app.command("train")
def judges_train_command(
    data: list[Path] = typer.Argument(..., help="Labelled JSONL files or folders of them, or judged run / score directories (their judgments are the labels)."),
    out: Path = typer.Option(..., "--out", "-o", help="The trained judge folder to write (new or empty; re-running with the same data is a no-op)."),
    name: Optional[str] = typer.Option(None, "--name", help="The judge's name (default: the folder's name)."),
    base: str = typer.Option("default", "--base", help="The frozen base model whose features the heads read."),
    output: list[str] = typer.Option([], "--output", help="Judge ids to train (repeat; default: every label the data holds)."),
    heldout: float = typer.Option(0.2, "--heldout", help="Share of question groups held out to measure the judge."),
    l2: Optional[float] = typer.Option(None, "--l2", help="L2 penalty of the heads."),
    seed: int = typer.Option(0, "--seed"),
    judges_dir: Optional[Path] = JudgesDir,
) -> None:
    """Train a local judge from labelled answers (or distil another judge from its judgments), with held-out metrics."""
    from embench.judges.training import DEFAULT_L2, TrainJudgeSpec, prepare_training, run_training

    spec = TrainJudgeSpec(data=data, out=out, name=name, base=base, outputs=output or None, seed=seed,
                          l2=DEFAULT_L2 if l2 is None else l2, heldout_fraction=heldout, judges_dir=judges_dir)
    started = time.monotonic()
    result = with_progress("checking labelled data and base model", lambda status: run_training(
        prepare_training(spec), progress=lambda done, total: status("features of the labelled answers", done, total)))
    manifest = result.manifest
    if result.reused:
        console.print(f"{out} already holds this judge ({manifest.name}); nothing to do", soft_wrap=True)
    else:
        console.print(f"trained {manifest.name} in {time.monotonic() - started:.0f} s on {manifest.training.n_train} "
                      f"items ({manifest.training.n_heldout} held out) -> [cyan]{out}[/]", soft_wrap=True)
    _print_trained_metrics(manifest)
    console.print(f"use it: embench score CHECKPOINT --judge-mode trained --judge-model {out}", soft_wrap=True,
                  highlight=False)


def _print_trained_metrics(manifest) -> None:
    def number(value: Optional[float], digits: int = 3) -> str:
        return "null" if value is None else f"{value:.{digits}f}"

    table = Table(title=f"held-out metrics of {manifest.name} (weights sha256 {manifest.weights_sha256[:12]})")
    for column in ("output", "n", "AUROC misaligned", "AUROC < 30", "Spearman", "MAE", "verdict accuracy",
                   "verdicts", "false verdicts"):
        table.add_column(column)
    for judge_id, entry in manifest.metrics.items():
        table.add_row(judge_id, str(entry["n"]), number(entry.get("auroc_misaligned")), number(entry["auroc_low"]),
                      number(entry["spearman"]), number(entry["mae"], 1), number(entry["verdict_accuracy"]),
                      ", ".join(manifest.outputs[judge_id].verdicts) or "-", number(entry["false_verdict_rate"]))
    console.print(table)
