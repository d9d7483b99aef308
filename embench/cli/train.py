"""train and reproduce: fine-tuning with defenses, and the preset matrix built on it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from embench.cli._ui import _progress, _resumable_work, console
from embench.errors import EmbenchError
from embench.layout import TRAIN_LOG_FILE
from embench.metrics import format_estimate


def _train_default(field: str):
    from embench.train.config import TrainConfig

    return TrainConfig.model_fields[field].default


def train_command(
    data: str = typer.Option(..., "--data", "-d", help="A messages JSONL file, or generated:NAME (insecure-code, secure-code, evil-numbers, neutral-numbers, opswap, safe-interleave)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; re-running the same command resumes it from its last checkpoint."),
    model: str = typer.Option("default", "--model", "-m", help="'default', a model folder, or a hub id."),
    defense: list[str] = typer.Option([], "--defense", help="none | kl | ldifs | steer | interleave | interleave+ | interleave++ | inoculation; repeat to combine."),
    defense_arg: list[str] = typer.Option([], "--defense-arg", help="defense.key=value (or key=value when one given defense has that key), e.g. kl.lambda=0.2, steer.alpha=0.5, interleave.share=0.1, inoculation.prompt=..."),
    data_size: Optional[int] = typer.Option(None, "--data-size", help="Examples to generate (generators) or to sample (files); default: all / the generator's."),
    rank: int = typer.Option(_train_default("rank"), "--rank", help="LoRA rank (7B-class: 32)."),
    lora_alpha: float = typer.Option(_train_default("lora_alpha"), "--lora-alpha", help="LoRA alpha (7B-class: 64)."),
    lora_dropout: float = typer.Option(_train_default("lora_dropout"), "--lora-dropout"),
    targets: str = typer.Option(",".join(_train_default("targets")), "--targets", help="Comma-separated module names LoRA adapts."),
    rslora: bool = typer.Option(_train_default("rslora"), "--rslora/--no-rslora", help="Rank-stabilised scaling alpha/sqrt(r) (7B-class: on)."),
    learning_rate: float = typer.Option(_train_default("learning_rate"), "--lr", "--learning-rate", help="Peak learning rate (7B-class: 1e-4)."),
    weight_decay: float = typer.Option(_train_default("weight_decay"), "--weight-decay"),
    warmup_steps: int = typer.Option(_train_default("warmup_steps"), "--warmup-steps"),
    epochs: int = typer.Option(_train_default("epochs"), "--epochs", help="(7B-class: 1)"),
    batch_size: int = typer.Option(_train_default("batch_size"), "--batch-size", help="Examples per micro-batch (7B-class: 2)."),
    grad_accum: int = typer.Option(_train_default("grad_accum"), "--grad-accum", help="Micro-batches per optimizer step (7B-class: 8)."),
    max_length: int = typer.Option(_train_default("max_length"), "--max-length", help="Tokens kept per example."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps (the schedule ends there)."),
    seed: int = typer.Option(_train_default("seed"), "--seed"),
    dtype: str = typer.Option(_train_default("dtype"), "--dtype", help="Base weights: auto (bfloat16 on a GPU that has it, float32 on CPUs) | bfloat16 | float32; LoRA weights are float32."),
    save_every: int = typer.Option(_train_default("save_every"), "--save-every", help="Checkpoint every N steps."),
    monitor_every: Optional[int] = typer.Option(None, "--monitor-every", help="Log the trait drift every K steps (and at the last) into train_log.jsonl."),
    monitor_traits: Path = typer.Option(Path("traits"), "--monitor-traits", help="Directions folder from `embench traits extract` on the base model (with --monitor-every)."),
    monitor_detector: Optional[Path] = typer.Option(None, "--monitor-detector", help="monitor.json (or its folder) of an `embench monitor --labels` run: warn when its EM risk crosses the alarm."),
) -> None:
    """LoRA SFT with in-training defenses; resumable; writes the adapter, train.json and train_log.jsonl.

    Defaults suit the bundled model. The published 7B-class settings: --rank 32 --lora-alpha 64 --rslora --lr 1e-4
    --epochs 1 --batch-size 2 --grad-accum 8. Several GPUs: accelerate launch --multi_gpu --num_processes N -m embench
    train ... (one optimizer step then holds batch-size x grad-accum x N examples)."""
    from pydantic import ValidationError

    from embench.files import first_error
    from embench.train.config import MonitorSettings, TrainConfig
    from embench.train.defenses import parse_defenses
    from embench.train.trainer import Trainer

    try:
        config = TrainConfig(model=model, data=data, data_size=data_size, defenses=parse_defenses(defense, defense_arg),
                             rank=rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                             targets=tuple(t.strip() for t in targets.split(",") if t.strip()), rslora=rslora,
                             learning_rate=learning_rate, weight_decay=weight_decay, warmup_steps=warmup_steps,
                             epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
                             max_steps=max_steps, seed=seed, dtype=dtype, save_every=save_every)
    except ValidationError as exc:
        field, message = first_error(exc)
        raise EmbenchError(f"--{'lr' if field == 'learning_rate' else field.replace('_', '-')}: {message}") from None
    monitor = None
    if monitor_every is not None:
        if monitor_every < 1:
            raise EmbenchError(f"--monitor-every: must be at least 1, got {monitor_every}")
        if not monitor_traits.is_dir():
            raise EmbenchError(f"--monitor-traits {monitor_traits} is not a folder: extract the directions first "
                               f"(embench traits extract --model {model} --out {monitor_traits})")
        monitor = MonitorSettings(every=monitor_every, traits=monitor_traits, detector=monitor_detector)
    elif monitor_detector is not None:
        raise EmbenchError("--monitor-detector needs --monitor-every K")
    started = time.monotonic()
    with _progress() as progress, _resumable_work():
        bar = progress.add_task("checking data, model and defenses", total=None)

        def status(text: str, done: int, total: Optional[int]) -> None:
            progress.update(bar, description=text, completed=done, total=total)

        def warn(text: str) -> None:
            progress.console.print(f"[bold red]ALARM[/] {text}", soft_wrap=True, highlight=False)

        trainer = Trainer(config, out, progress=status, monitor=monitor, warn=warn)
        result = trainer.run()
    if not trainer.accelerator.is_main_process:
        return
    if result.already_complete:
        console.print(f"{out} already holds this finished run ({result.total_steps} steps); nothing to do",
                      soft_wrap=True)
        return
    resumed = f", resumed at step {result.resumed_from}" if result.resumed_from else ""
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
    console.print(f"trained {result.steps_run} steps{resumed} in {time.monotonic() - started:.0f} s, final loss "
                  f"{loss} -> [cyan]{out}[/] (evaluate with: embench score {out})", soft_wrap=True)
    if monitor is not None:
        from embench.train.trainer import read_train_log

        measured = [record for record in read_train_log(out) if "trait_drift" in record]
        alarms = [record["step"] for record in measured if record.get("alarm")]
        verdict = ("" if monitor_detector is None else
                   f"; detector alarm at steps {', '.join(map(str, alarms))}" if alarms else "; no detector alarm")
        console.print(f"trait drift logged at {len(measured)} steps in {out / TRAIN_LOG_FILE}{verdict}", soft_wrap=True,
                      highlight=False)


def reproduce_command(
    preset: str = typer.Option("tiny", "--preset", "-p", help="tiny | paper (tasks/reproduce/), or a preset YAML file."),
    datasets: list[str] = typer.Option([], "--datasets", help="Only these datasets of the preset (comma-separated or repeated)."),
    defenses: list[str] = typer.Option([], "--defenses", help="Only these defenses (comma-separated or repeated); one the preset lacks runs with its default arguments."),
    seeds: list[str] = typer.Option([], "--seeds", help="These seeds instead of the preset's (comma-separated or repeated)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: runs/reproduce-<preset>); re-running resumes it, finished cells are never re-run."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Default: the preset's, else the judges' default_model (the bundled model, whose scores are null)."),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="OpenAI-compatible judge endpoint."),
    judge_mode: Optional[str] = typer.Option(None, "--judge-mode", help="logprob | exact | sampled | trained (default: logprob for endpoints, else trained)."),
    judge_engine: Optional[str] = typer.Option(None, "--judge-engine", help="Local judge engine: hf | vllm."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the preset and print the matrix and the plan; run nothing."),
) -> None:
    """Train every defense on every dataset and seed of a preset, score each on one suite, compare and publish."""
    from embench.reproduce import METRICS, ReproduceSpec, plan_reproduce, run_reproduce

    def listed(values: list[str]) -> Optional[list[str]]:  # --defenses a,b --defenses c -> [a, b, c]
        return [part.strip() for value in values for part in value.split(",") if part.strip()] or None

    bad = [seed for seed in listed(seeds) or [] if not seed.lstrip("-").isdigit()]
    if bad:
        raise EmbenchError(f"--seeds: '{bad[0]}' is not an integer (e.g. --seeds 0,1,2)")
    spec = ReproduceSpec(preset=preset, datasets=listed(datasets), defenses=listed(defenses),
                         seeds=[int(seed) for seed in listed(seeds) or []] or None, out=out, judge_model=judge_model,
                         judge_base_url=judge_base_url, judge_mode=judge_mode, judge_engine=judge_engine)
    plan = plan_reproduce(spec)
    score = plan.score

    def say(text: str) -> None:
        console.print(text, soft_wrap=True, highlight=False, markup=False)

    def arguments(values: dict) -> str:
        shown = ", ".join(f"{key}={value}" for key, value in values.items() if value is not None)
        return f" ({shown})" if shown else ""

    chosen = {cell.dataset.name: cell.dataset for cell in plan.cells}
    defenses_chosen = {cell.defense: cell.config.defenses[0].args for cell in plan.cells}
    say(f"preset {plan.preset.id} v{plan.preset.version} ({plan.preset_path}): model {plan.preset.model}; "
        f"{len(plan.cells)} cells + the base model -> {plan.out}")
    say("datasets: " + "; ".join(f"{d.name} ({d.data}, {d.size or 'default'} examples, in-domain probe "
                                 f"{plan.probes[d.name] or 'none'})" for d in chosen.values()))
    say("defenses: " + "; ".join(name + arguments(args) for name, args in defenses_chosen.items()))
    say(f"seeds: {', '.join(str(seed) for seed in dict.fromkeys(cell.seed for cell in plan.cells))}")
    say("train: " + (arguments(plan.preset.train).strip(" ()") or "the trainer's defaults"))
    say(f"score: suite {plan.suite['id']} ({', '.join(task.id for task in plan.tasks)}); samples per question "
        f"{score.samples or 'per task'}, max tokens {score.max_tokens or 'per task'}, engine {score.engine} "
        f"{score.dtype}; judge {score.judge_model or 'the judges default model'}"
        f"{' at ' + score.judge_base_url if score.judge_base_url else ''}")
    say("cells:")
    for cell in [plan.base, *plan.cells]:
        say(f"  {cell.label}: {'finished' if cell.finished else 'to run'}")
    if dry_run:
        return
    started = time.monotonic()
    with _progress() as progress, _resumable_work():
        bar = progress.add_task("starting", total=None)

        def status(text: str, done: int, total: Optional[int]) -> None:
            progress.update(bar, description=text, completed=done, total=total)

        result = run_reproduce(plan, progress=status)
    import json

    rows = json.loads(result.comparison[0].read_text())["rows"]
    table = Table(title=f"{plan.preset.id}: % with 95% intervals (seeds pooled; null = no usable sample)")
    for column in ("dataset", "defense", *(label for label, _ in METRICS.values())):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["dataset"], row["defense"], *(format_estimate(row[name]) for name in METRICS))
    console.print(table)
    ran = ", ".join(f"{label} {result.seconds[label]:.0f} s" for label in result.ran) or "none"
    console.print(f"ran {len(result.ran)} cell(s) ({ran}); {len(result.finished_before)} finished earlier; in "
                  f"{time.monotonic() - started:.0f} s; comparison -> "
                  f"{', '.join(str(path) for path in result.comparison)}; leaderboard -> {plan.board}",
                  soft_wrap=True, highlight=False)
