"""train and reproduce: fine-tuning with defenses, and the preset matrix built on it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from embench.api import JudgeOptions
from embench.cli._ui import JUDGE_OPTIONS, OptionGroup, Verbose, console, grouped, library_output, with_progress
from embench.errors import EmbenchError
from embench.layout import LIBRARY_LOG_FILE, TRAIN_LOG_FILE
from embench.metrics import format_estimate


def _option(field: str, *flags: str, help: Optional[str] = None) -> tuple:
    from embench.train.config import TrainConfig

    info = TrainConfig.model_fields[field]
    default = ",".join(info.default) if field == "targets" else info.default
    annotation = str if field in ("targets", "dtype") else info.annotation  # typer parses the text; the config checks it
    return annotation, typer.Option(default, *flags, help=help)


TRAINING = OptionGroup(
    dict,
    rank=_option("rank", "--rank", help="LoRA rank (7B-class: 32)."),
    lora_alpha=_option("lora_alpha", "--lora-alpha", help="LoRA alpha (7B-class: 64)."),
    lora_dropout=_option("lora_dropout", "--lora-dropout"),
    targets=_option("targets", "--targets", help="Comma-separated module names LoRA adapts."),
    rslora=_option("rslora", "--rslora/--no-rslora", help="Rank-stabilised scaling alpha/sqrt(r) (7B-class: on)."),
    learning_rate=_option("learning_rate", "--lr", "--learning-rate", help="Peak learning rate (7B-class: 1e-4)."),
    weight_decay=_option("weight_decay", "--weight-decay"),
    warmup_steps=_option("warmup_steps", "--warmup-steps"),
    epochs=_option("epochs", "--epochs", help="(7B-class: 1)"),
    batch_size=_option("batch_size", "--batch-size", help="Examples per micro-batch (7B-class: 2)."),
    grad_accum=_option("grad_accum", "--grad-accum", help="Micro-batches per optimizer step (7B-class: 8)."),
    max_length=_option("max_length", "--max-length", help="Tokens kept per example."),
    max_steps=_option("max_steps", "--max-steps", help="Stop after this many optimizer steps (the schedule ends there)."),
    seed=_option("seed", "--seed"),
    dtype=_option("dtype", "--dtype", help="Base weights: auto (bfloat16 on a GPU that has it, float32 on CPUs) | bfloat16 | float32; LoRA weights are float32."),
    save_every=_option("save_every", "--save-every", help="Checkpoint every N steps."),
)
MONITORING = OptionGroup(
    lambda **values: values,
    monitor_every=(Optional[int], typer.Option(None, "--monitor-every", help="Log the trait drift every K steps (and at the last) into train_log.jsonl.")),
    monitor_traits=(Path, typer.Option(Path("traits"), "--monitor-traits", help="Directions folder from `embench traits extract` on the base model (with --monitor-every).")),
    monitor_detector=(Optional[Path], typer.Option(None, "--monitor-detector", help="monitor.json (or its folder) of an `embench monitor --labels` run: warn when its EM risk crosses the alarm.")),
)


@grouped
def train_command(
    data: str = typer.Option(..., "--data", "-d", help="A messages JSONL file, or generated:NAME (insecure-code, secure-code, evil-numbers, neutral-numbers, opswap, safe-interleave)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; re-running the same command resumes it from its last checkpoint."),
    verbose: bool = Verbose,
    model: str = typer.Option("default", "--model", "-m", help="'default', a model folder, or a hub id."),
    defense: list[str] = typer.Option([], "--defense", help="none | kl | ldifs | steer | interleave | interleave+ | interleave++ | inoculation; repeat to combine."),
    defense_arg: list[str] = typer.Option([], "--defense-arg", help="defense.key=value (or key=value when one given defense has that key), e.g. kl.lambda=0.2, steer.alpha=0.5, interleave.share=0.1, inoculation.prompt=..."),
    data_size: Optional[int] = typer.Option(None, "--data-size", help="Examples to generate (generators) or to sample (files); default: all / the generator's."),
    training: dict = TRAINING,
    monitoring: dict = MONITORING,
) -> None:
    """LoRA SFT with in-training defenses; resumable; writes the adapter, train.json and train_log.jsonl.

    Defaults suit the bundled model. The published 7B-class settings: --rank 32 --lora-alpha 64 --rslora --lr 1e-4
    --epochs 1 --batch-size 2 --grad-accum 8. Several GPUs: accelerate launch --multi_gpu --num_processes N -m embench
    train ... (one optimizer step then holds batch-size x grad-accum x N examples)."""
    spec = _train_spec(model, data, data_size, defense, defense_arg, training, monitoring, out)
    started = time.monotonic()

    def train(status):
        from embench.train.trainer import run_training

        with library_output(out / LIBRARY_LOG_FILE, verbose):
            return run_training(spec.prepare(status), status, warn=_alarm)

    result = with_progress("checking data, model and defenses", train)
    if result.main_process:
        _report_training(result, out, spec.monitor, time.monotonic() - started)


def _train_spec(model: str, data: str, data_size: Optional[int], defense: list[str], defense_arg: list[str],
                training: dict, monitoring: dict, out: Path):
    """The flags as a TrainSpec; a config error names the flag it came from."""
    from pydantic import ValidationError

    from embench.files import first_error
    from embench.train.config import TrainConfig, monitor_settings
    from embench.train.defenses import parse_defenses
    from embench.train.trainer import TrainSpec

    targets = tuple(target.strip() for target in training.pop("targets").split(",") if target.strip())
    try:
        config = TrainConfig(model=model, data=data, data_size=data_size, targets=targets,
                             defenses=parse_defenses(defense, defense_arg), **training)
    except ValidationError as exc:
        field, message = first_error(exc)
        flag = TRAINING.flag(field) if field in TRAINING.options else f"--{field.replace('_', '-')}"
        raise EmbenchError(f"{flag}: {message}") from None
    return TrainSpec(config, out, monitor_settings(model, **monitoring))


def _alarm(text: str) -> None:
    console.print(f"[bold red]ALARM[/] {text}", soft_wrap=True, highlight=False)


def _report_training(result, out: Path, monitor, seconds: float) -> None:
    if result.already_complete:
        console.print(f"{out} already holds this finished run ({result.total_steps} steps); nothing to do",
                      soft_wrap=True)
        return
    resumed = f", resumed at step {result.resumed_from}" if result.resumed_from else ""
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
    console.print(f"trained {result.steps_run} steps{resumed} in {seconds:.0f} s, final loss {loss} -> [cyan]{out}[/] "
                  f"(evaluate with: embench score {out})", soft_wrap=True)
    if monitor is not None:
        from embench.train.trainer import read_train_log

        measured = [record for record in read_train_log(out) if "trait_drift" in record]
        alarms = [record["step"] for record in measured if record.get("alarm")]
        verdict = ("" if monitor.detector is None else
                   f"; detector alarm at steps {', '.join(map(str, alarms))}" if alarms else "; no detector alarm")
        console.print(f"trait drift logged at {len(measured)} steps in {out / TRAIN_LOG_FILE}{verdict}", soft_wrap=True,
                      highlight=False)


def _executor(executor: str, address: Optional[str], cpus_per_cell: int) -> dict:
    if executor not in ("local", "ray"):
        raise EmbenchError(f"--executor: unknown executor '{executor}': choose local or ray")
    if address is not None and executor != "ray":
        raise EmbenchError("--address names a Ray cluster: add --executor ray")
    return {"executor": executor, "address": address, "cpus_per_cell": cpus_per_cell}


EXECUTOR = OptionGroup(
    _executor,
    executor=(str, typer.Option("local", "--executor", help="local: cells one after another in this process; ray: each cell a Ray task (a GPU each where there are GPUs).")),
    address=(Optional[str], typer.Option(None, "--address", help="With --executor ray: the cluster to join (auto, HOST:PORT, ray://HOST:10001); default: start one on this machine.")),
    cpus_per_cell=(int, typer.Option(1, "--cpus-per-cell", min=1, help="With --executor ray: CPU cores each cell's task takes.")),
)
SCHEDULE = OptionGroup(
    dict,
    plan=(bool, typer.Option(False, "--plan", help="Print the schedule of every cell on --gpus GPUs (cells at once, waves, wall time, GPU-hours).")),
    gpus=(list[str], typer.Option([], "--gpus", help="With --plan: GPUs to plan for (comma-separated or repeated: 1,8,64).")),
    gpus_per_node=(int, typer.Option(8, "--gpus-per-node", min=1, help="With --plan: GPUs on each node (a cell never spans nodes).")),
    cell_hours=(Optional[float], typer.Option(None, "--cell-hours", help="With --plan: one trained cell's train + score hours (default: measured on the finished cells in --out).")),
    score_hours=(Optional[float], typer.Option(None, "--score-hours", help="With --plan: one score's hours (the base model's cost).")),
)


@grouped
def reproduce_command(
    preset: str = typer.Option("tiny", "--preset", "-p", help="tiny | paper (tasks/reproduce/), or a preset YAML file."),
    datasets: list[str] = typer.Option([], "--datasets", help="Only these datasets of the preset (comma-separated or repeated)."),
    defenses: list[str] = typer.Option([], "--defenses", help="Only these defenses (comma-separated or repeated); one the preset lacks runs with its default arguments."),
    seeds: list[str] = typer.Option([], "--seeds", help="These seeds instead of the preset's (comma-separated or repeated)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: runs/reproduce-<preset>); re-running resumes it, finished cells are never re-run."),
    verbose: bool = Verbose,
    judge: JudgeOptions = JUDGE_OPTIONS,
    executor: dict = EXECUTOR,
    schedule: dict = SCHEDULE,
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the preset and print the matrix and the plan; run nothing."),
) -> None:
    """Train every defense on every dataset and seed of a preset, score each on one suite, compare and publish.
    The judge defaults to the preset's, else the judges' own."""
    from embench.reproduce import ReproduceSpec, listed, parse_seeds, plan_reproduce, run_reproduce

    spec = ReproduceSpec(preset=preset, datasets=listed(datasets), defenses=listed(defenses), seeds=parse_seeds(seeds),
                         out=out, judge_model=judge.model, judge_base_url=judge.base_url, judge_mode=judge.mode,
                         judge_engine=judge.engine, **executor)
    plan = plan_reproduce(spec)
    _show_plan(plan)
    if schedule.pop("plan"):
        _show_schedule(plan, **schedule)
    elif schedule["gpus"] or schedule["cell_hours"] is not None or schedule["score_hours"] is not None:
        raise EmbenchError("--gpus, --cell-hours and --score-hours go with --plan")
    if dry_run:
        return
    started = time.monotonic()

    def reproduce(status):
        with library_output(plan.out / LIBRARY_LOG_FILE, verbose):
            return run_reproduce(plan, progress=status)

    result = with_progress("starting", reproduce)
    _show_comparison(plan, result)
    ran = ", ".join(f"{label} {result.seconds[label]:.0f} s" for label in result.ran) or "none"
    console.print(f"ran {len(result.ran)} cell(s) ({ran}); {len(result.finished_before)} finished earlier; in "
                  f"{time.monotonic() - started:.0f} s; comparison -> "
                  f"{', '.join(str(path) for path in result.comparison)}; leaderboard -> {plan.board}",
                  soft_wrap=True, highlight=False)


def _show_schedule(plan, gpus: list[str], gpus_per_node: int, cell_hours: float | None,
                   score_hours: float | None) -> None:
    from embench.reproduce.plan import listed
    from embench.reproduce.schedule import cell_costs, schedule

    counts = listed(gpus) or []
    if not counts or not all(count.isdigit() and int(count) > 0 for count in counts):
        raise EmbenchError("--plan needs --gpus: one or more GPU counts above 0 (e.g. --gpus 1,8,64)")
    costs = cell_costs(plan, cell_hours, score_hours)
    _say(f"per-cell cost ({costs.source}): {costs.cell_hours:.3g} h a trained cell, {costs.score_hours:.3g} h a "
         f"score; {plan.score.gpus_per_cell} GPU(s) a cell")
    table = Table(title=f"{plan.preset.id}: {len(plan.cells)} cells + the base model")
    for column in ("GPUs", "nodes", "cells at once", "waves", "wall time (h)", "GPU-hours", "GPU use"):
        table.add_column(column, justify="right")
    for count in dict.fromkeys(int(count) for count in counts):
        row = schedule(plan, costs, count, min(gpus_per_node, count))
        table.add_row(str(row.gpus), str(row.nodes), str(row.slots), str(row.waves), f"{row.wall_hours:.2f}",
                      f"{row.gpu_hours:.2f}", f"{row.utilization:.0%}")
    console.print(table)


def _say(text: str) -> None:
    console.print(text, soft_wrap=True, highlight=False, markup=False)


def _arguments(values: dict) -> str:
    shown = ", ".join(f"{key}={value}" for key, value in values.items() if value is not None)
    return f" ({shown})" if shown else ""


def _show_plan(plan) -> None:
    score = plan.score
    chosen = {cell.dataset.name: cell.dataset for cell in plan.cells}
    defenses_chosen = {cell.defense: cell.config.defenses[0].args for cell in plan.cells}
    _say(f"preset {plan.preset.id} v{plan.preset.version} ({plan.preset_path}): model {plan.preset.model}; "
         f"{len(plan.cells)} cells + the base model -> {plan.out}")
    _say("datasets: " + "; ".join(f"{d.name} ({d.data}, {d.size or 'default'} examples, in-domain probe "
                                  f"{plan.probes[d.name] or 'none'})" for d in chosen.values()))
    _say("defenses: " + "; ".join(name + _arguments(args) for name, args in defenses_chosen.items()))
    _say(f"seeds: {', '.join(str(seed) for seed in dict.fromkeys(cell.seed for cell in plan.cells))}")
    _say("train: " + (_arguments(plan.preset.train).strip(" ()") or "the trainer's defaults"))
    _say(f"score: suite {plan.suite['id']} ({', '.join(task.id for task in plan.tasks)}); samples per question "
         f"{score.samples or 'per task'}, max tokens {score.max_tokens or 'per task'}, engine {score.engine} "
         f"{score.dtype}; judge {score.judge_model or 'the judges default model'}"
         f"{' at ' + score.judge_base_url if score.judge_base_url else ''}")
    _say("cells:")
    for cell in [plan.base, *plan.cells]:
        _say(f"  {cell.label}: {'finished' if cell.finished else 'to run'}")


def _show_comparison(plan, result) -> None:
    from embench.files import read_json
    from embench.reproduce import METRICS

    rows = read_json(result.comparison[0], "the comparison of `embench reproduce`")["rows"]
    table = Table(title=f"{plan.preset.id}: % with 95% intervals (seeds pooled; null = no usable sample)")
    for column in ("dataset", "defense", *(label for label, _ in METRICS.values())):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["dataset"], row["defense"], *(format_estimate(row[name]) for name in METRICS))
    console.print(table)
