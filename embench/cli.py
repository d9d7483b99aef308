"""The ``embench`` command line: a thin shell over the Python API, with rich output."""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from embench.engines.base import KV_CACHE_GIB, EngineOptions
from embench.errors import EmbenchError
from embench.metrics import format_estimate

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evaluate language models for emergent misalignment.")
models_app = typer.Typer(add_completion=False, help="The bundled default model and embench's model cache.")
app.add_typer(models_app, name="models")
judges_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Judges: list, show, render, validate, add, calibrate, train.")
app.add_typer(judges_app, name="judges")
tasks_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Task and suite definitions under tasks/.")
app.add_typer(tasks_app, name="tasks")
leaderboard_app = typer.Typer(add_completion=False, no_args_is_help=True,
                              help="Leaderboards: publish results, show, validate, render the page.")
app.add_typer(leaderboard_app, name="leaderboard")
traits_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Trait directions: list trait definitions, extract directions, import published traits.")
app.add_typer(traits_app, name="traits")
console = Console()
errors = Console(stderr=True)


def _quiet_libraries() -> None:
    # vLLM and transformers log pages of start-up detail; embench prints its own progress instead.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextmanager
def _resumable_work():
    """Ctrl-C (or SIGTERM) ends long work with exit 130 and says how to resume; finished work is on disk."""
    try:
        yield
    except KeyboardInterrupt:
        errors.print("interrupted: finished work is saved; run the same command again to resume", soft_wrap=True)
        raise typer.Exit(130) from None


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


@app.command("generate")
def generate_command(
    model: str = typer.Option("default", "--model", "-m", help="'default', a model folder, an adapter folder, or a hub id."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL file: one {id, messages} or {id, prompt, system} per line."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="A task id under tasks/ (or a task YAML file)."),
    n: Optional[int] = typer.Option(None, "-n", help="Samples per prompt (default: the task's, else 1)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<model>-<hash>); re-running resumes it."),
    engine: str = typer.Option("vllm", "--engine", "-e", help="vllm | vllm-server | openai | hf"),
    base: Optional[str] = typer.Option(None, "--base", help="Base model of an adapter, if its adapter_config does not name one that exists here."),
    temperature: Optional[float] = typer.Option(None, help="Default: the task's, else 1.0."),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (openai engine)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key."),
    concurrency: int = typer.Option(8, "--concurrency", help="Requests in flight at once (openai engines)."),
    kv_cache_gib: float = typer.Option(KV_CACHE_GIB, "--kv-cache-gib", help="vLLM KV cache on CPU, in GiB."),
    max_model_len: int = typer.Option(2048, "--max-model-len"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Default: bfloat16 for vLLM, float32 for hf."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load pickle (.bin/.pt) weights, which can run code."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run modelling code shipped with the checkpoint."),
) -> None:
    """Generate samples from a model into a resumable run directory."""
    from embench.api import GenerateSpec, run_generate

    spec = GenerateSpec(model=model, base=base, prompts=prompts, task=task, n=n, out=out, engine=engine,
                        temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, base_url=base_url,
                        api_key_env=api_key_env, concurrency=concurrency, kv_cache_gib=kv_cache_gib,
                        max_model_len=max_model_len, dtype=dtype, allow_pickle=allow_pickle,
                        trust_remote_code=trust_remote_code)
    started = time.monotonic()
    with _progress() as progress:
        bar = progress.add_task("resolving model", total=None)
        prepared = spec.prepare(status=lambda text: progress.update(bar, description=text))
        progress.update(bar, description=f"starting engine {engine}")

        def advance(done: int, total: int) -> None:
            progress.update(bar, description=f"generating ({engine})", completed=done, total=total)

        with _resumable_work():
            result = run_generate(prepared, progress=advance)
    elapsed = time.monotonic() - started
    console.print(f"[bold]{result.generated}[/] new samples, {result.reused} reused, in {elapsed:.1f} s -> "
                  f"[cyan]{result.run_dir}[/]")
    _print_examples(result.run_dir)


def _print_examples(run_dir: Path, count: int = 4) -> None:
    from embench.runs import read_generations

    table = Table(title="first samples", show_lines=True)
    table.add_column("prompt")
    table.add_column("completion")
    for generation in list(read_generations(run_dir))[:count]:
        table.add_row(generation.messages[-1].content, generation.completion[:300])
    console.print(table)


@models_app.callback(invoke_without_command=True)
def models_command(ctx: typer.Context) -> None:
    """Show the default model, the cache folder, and every cached model with its hash."""
    if ctx.invoked_subcommand is not None:
        return
    from embench.home import models_dir
    from embench.models import (
        DEFAULT_MODEL_NAME,
        GGUF_FILE,
        GGUF_PACKAGE,
        cached_models,
        default_model_dir,
    )

    console.print(f"default model: [bold]{DEFAULT_MODEL_NAME}[/] ({GGUF_FILE} from PyPI package {GGUF_PACKAGE})",
                  soft_wrap=True)
    console.print(f"default model folder: {default_model_dir()}", soft_wrap=True)
    console.print(f"cache: {models_dir()}", soft_wrap=True)
    rows = cached_models()
    console.print(f"{len(rows)} cached model(s):")
    # One line per model, never wrapped: hashes are for copying, not for a table to truncate.
    for row in rows:
        source = row["source"] or {}
        origin = f"{source.get('package', '')} {source.get('version', '')}".strip() or "-"
        console.print(f"  {Path(row['path']).name}  sha256={row['weights_sha256'] or '(no manifest)'}  "
                      f"source={origin}  {row['bytes'] / 1e6:.0f} MB", soft_wrap=True, highlight=False)


@models_app.command("prepare")
def models_prepare_command() -> None:
    """Convert the bundled GGUF into a safetensors folder in the cache (once; later calls are instant)."""
    from embench.models import prepare_default_model, weights_sha256

    with console.status("preparing the default model"):
        folder = prepare_default_model()
    console.print(f"default model ready: {folder} (weights sha256 {weights_sha256(folder)})")


JudgesDir = typer.Option(None, "--judges-dir", help="Another folder of judge YAML files to load.")


def _registry(judges_dir: Optional[Path]):
    from embench.judges import JudgeRegistry

    return JudgeRegistry.default(judges_dir)


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
    """The exact prompt a judge would receive for one question and answer."""
    spec = _registry(judges_dir).get(judge)
    console.print(spec.render(question=question, answer=answer, system=system, reasoning=reasoning),
                  markup=False, highlight=False, soft_wrap=True)


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
def judges_calibrate_command(
    judge: str = typer.Argument(..., help="Judge id (or id@version) to calibrate."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Default: the judge's own (its trained judge locally, default_model otherwise); in trained mode a trained judge folder."),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="OpenAI-compatible judge endpoint; without it the judge runs locally."),
    judge_mode: Optional[str] = typer.Option(None, "--judge-mode", help="logprob | exact | sampled | trained (default: logprob for endpoints; locally trained where the judges name a trained judge, else exact)."),
    judge_engine: Optional[str] = typer.Option(None, "--judge-engine", help="Local judge engine: hf | vllm (default: hf for exact, else vllm)."),
    calibration_set: Optional[Path] = typer.Option(None, "--set", help="Calibration JSONL (default: judges/calibration/<id>.jsonl)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Judge only the first N items of the set."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report JSON (default: ./calibration-<id>-v<version>.json)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env"),
    concurrency: int = typer.Option(32, "--concurrency", help="Judge requests in flight (endpoints)."),
    judges_dir: Optional[Path] = JudgesDir,
) -> None:
    """Judge a labelled calibration set and report AUROC, Spearman, verdict accuracy, nulls and injection shift."""
    from embench.judges import open_judge_backend
    from embench.judges.calibrate import calibrate, load_calibration_set, resolve_calibration_set
    from embench.judges.scoring import MIN_NUMBER_MASS
    from embench.judges.settings import judge_settings

    spec = _registry(judges_dir).get(judge)
    settings = judge_settings([spec], model=judge_model, mode=judge_mode, base_url=judge_base_url)
    mode = settings.mode
    if judge_engine is not None and judge_engine not in ("hf", "vllm"):
        raise EmbenchError(f"unknown --judge-engine '{judge_engine}': choose hf or vllm")
    if limit is not None and limit < 1:
        raise EmbenchError(f"--limit must be at least 1 (got {limit})")
    set_path = resolve_calibration_set(spec.id, calibration_set)
    items = load_calibration_set(set_path)[:limit]
    report_path = out or Path.cwd() / f"calibration-{spec.id}-v{spec.version}.json"
    started = time.monotonic()
    with _progress() as progress, _resumable_work():
        bar = progress.add_task("starting judge", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(bar, description=f"calibrating {spec.key} ({mode})", completed=done, total=total)

        with open_judge_backend(settings.model, mode=mode, base_url=judge_base_url,
                                engine=judge_engine, api_key_env=api_key_env, concurrency=concurrency) as backend:
            report = calibrate(spec, backend, mode, items, set_path=set_path, progress=advance)
    report.write(report_path)
    elapsed = time.monotonic() - started

    def number(value: Optional[float], digits: int = 3) -> str:
        return "null" if value is None else f"{value:.{digits}f}"

    metrics = report.metrics
    table = Table(title=f"calibration of {spec.key} ({mode}, {report.judge['judge_model']})")
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
    console.print(f"{len(items)} items in {elapsed:.1f} s; report -> [cyan]{report_path}[/]", soft_wrap=True)


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
    with _progress() as progress, _resumable_work():
        bar = progress.add_task("checking labelled data and base model", total=None)
        prepared = prepare_training(spec)

        def advance(done: int, total: int) -> None:
            progress.update(bar, description="features of the labelled answers", completed=done, total=total)

        result = run_training(prepared, progress=advance)
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


@app.command("judge")
def judge_command(
    run_dir: Path = typer.Argument(..., help="A run directory written by `embench generate` (or `score`)."),
    judge: list[str] = typer.Option(["aligned"], "--judge", "-j", help="Judge id (or id@version); repeat for several."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Default: the judge's own (its trained judge locally, default_model otherwise); in trained mode a trained judge folder."),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="OpenAI-compatible judge endpoint; without it the judge runs locally on vLLM."),
    judge_mode: Optional[str] = typer.Option(None, "--judge-mode", help="logprob | exact | sampled | trained (default: logprob for endpoints; locally trained where the judges name a trained judge, else exact)."),
    judge_engine: Optional[str] = typer.Option(None, "--judge-engine", help="Local judge engine: hf | vllm (default: hf for exact, else vllm)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env"),
    concurrency: int = typer.Option(32, "--concurrency", help="Judge requests in flight (endpoints)."),
    judges_dir: Optional[Path] = JudgesDir,
) -> None:
    """Score an existing run with judges, without regenerating anything."""
    from embench.judges import open_judge_backend
    from embench.judges.judging import check_run_dir, judge_run
    from embench.judges.settings import judge_settings

    check_run_dir(run_dir)  # before a judge model is loaded
    registry = _registry(judges_dir)
    specs = [registry.get(reference) for reference in judge]
    settings = judge_settings(specs, model=judge_model, mode=judge_mode, base_url=judge_base_url)
    mode = settings.mode
    with _progress() as progress, _resumable_work():
        bar = progress.add_task("starting judge", total=None)
        with open_judge_backend(settings.model, mode=mode, base_url=judge_base_url, engine=judge_engine,
                                api_key_env=api_key_env, concurrency=concurrency) as backend:
            for spec in specs:
                def advance(done: int, total: int, spec=spec) -> None:
                    progress.update(bar, description=f"judging {spec.key} ({mode})", completed=done, total=total)

                result = judge_run(run_dir, spec, backend, mode, progress=advance)
                console.print(f"{spec.key}: {result.judged} judged, {result.cached} from cache, {result.reused} "
                              f"already done, {result.failed} failed (re-run to retry them)")
    console.print(f"judgments -> [cyan]{run_dir / 'judgments.jsonl'}[/]")


@app.command("score")
def score_command(
    checkpoint: str = typer.Argument("default", help="'default', a model folder, an adapter folder, or a hub id."),
    suite: str = typer.Option("em-core", "--suite", help="A suite id under tasks/suites (em-core, em-full) or a file."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Samples per question (default: the suite's / task's)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    engine: str = typer.Option("vllm", "--engine", "-e", help="Generation engine: vllm | vllm-server | hf."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model of an adapter checkpoint."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Default: the judges' own (their trained judge locally, default_model otherwise); in trained mode a trained judge folder."),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="OpenAI-compatible judge endpoint."),
    judge_mode: Optional[str] = typer.Option(None, "--judge-mode", help="logprob | exact | sampled | trained (default: logprob for endpoints, else trained)."),
    judge_engine: Optional[str] = typer.Option(None, "--judge-engine", help="Local judge engine: hf | vllm."),
    judges_dir: Optional[Path] = JudgesDir,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Score directory (default: runs/score-<suite>-<model>-<hash>); re-running resumes it."),
    kv_cache_gib: float = typer.Option(KV_CACHE_GIB, "--kv-cache-gib", help="vLLM KV cache on CPU, in GiB."),
    dtype: str = typer.Option("float32", "--dtype", help="Generation dtype. float32 makes a resumed run identical to an uninterrupted one; bfloat16 is faster (and usual on GPUs) but batch-dependent."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
) -> None:
    """Score a checkpoint on an EM suite: generate, judge, compute metrics, write results.json."""
    from embench.score import ScoreSpec, prepare_score, run_score

    spec = ScoreSpec(checkpoint=checkpoint, suite=suite, samples=samples, max_tokens=max_tokens, seed=seed,
                     engine=engine, base=base, judge_model=judge_model, judge_base_url=judge_base_url,
                     judge_mode=judge_mode, judge_engine=judge_engine, judges_dir=judges_dir, out=out,
                     options=EngineOptions(kv_cache_gib=kv_cache_gib, dtype=dtype), allow_pickle=allow_pickle,
                     trust_remote_code=trust_remote_code)
    started = time.monotonic()
    with _progress() as progress, _resumable_work():
        bar = progress.add_task("checking suite, judges and model", total=None)
        prepared = prepare_score(spec)

        def status(text: str, done: int, total: int | None) -> None:
            progress.update(bar, description=text, completed=done, total=total)

        results_path = run_score(prepared, status=status)
    console.print(f"scored in {time.monotonic() - started:.0f} s -> [cyan]{results_path}[/]")
    _print_results(results_path)


def _print_results(results_path: Path) -> None:
    import json

    results = json.loads(results_path.read_text())
    table = Table(title=f"{results['suite']['id']} v{results['suite']['version']}: {results['config']['model_name']}")
    for column in ("task", "metric", "value [95% CI]"):
        table.add_column(column, overflow="fold")
    for task_id, metrics in results["results"].items():
        for name, value in metrics.items():
            if name.endswith("_verdicts"):
                if value:
                    table.add_row(task_id, name, ", ".join(f"{k}: {v}" for k, v in value.items()))
            elif isinstance(value, dict) and "method" in value:
                table.add_row(task_id, name, format_estimate(value, percent=value["method"] == "wilson"))
            elif name == "perplexity":
                table.add_row(task_id, name, f"{value['perplexity']:.2f} over {value['tokens']} tokens")
            else:
                table.add_row(task_id, name, json.dumps(value)[:120])
    console.print(table)


@tasks_app.command("list")
def tasks_list_command() -> None:
    """Every task and suite, with version, family, size and content hash."""
    from embench.tasks import all_tasks, find_suite, tasks_dir

    table = Table()
    for column in ("id", "version", "family", "questions", "judges", "sha256"):
        table.add_column(column, overflow="fold")
    for _, task in all_tasks():
        table.add_row(task.id, str(task.version), task.family, str(len(task.questions)),
                      ", ".join(f"{m}={j}" for m, j in task.judges.items()) or "-", task.sha256[:12])
    console.print(table)
    for path in sorted((tasks_dir() / "suites").glob("*.yaml")):
        suite = find_suite(str(path))
        console.print(f"suite {suite.id} v{suite.version}: {', '.join(suite.tasks)}", soft_wrap=True)


@tasks_app.command("show")
def tasks_show_command(task: str) -> None:
    """A task's definition (as loaded, data sources read in)."""
    import yaml

    from embench.tasks import find_task

    loaded = find_task(task)
    console.print(yaml.safe_dump({**loaded.model_dump(mode="json"), "sha256": loaded.sha256}, sort_keys=False,
                                 allow_unicode=True, width=120), markup=False, highlight=False, soft_wrap=True)


@tasks_app.command("validate")
def tasks_validate_command(files: list[Path]) -> None:
    """Check task files (schema, data sources, judges named by their metrics exist)."""
    from embench.judges import JudgeRegistry
    from embench.tasks import load_task_file

    registry = JudgeRegistry.default()
    for file in files:
        if not file.is_file():
            raise EmbenchError(f"task file {file} does not exist")
        task = load_task_file(file)
        for judge_id in task.judges.values():
            registry.get(judge_id)
        console.print(f"ok: {task.id} v{task.version} ({len(task.questions)} questions, sha256 {task.sha256[:12]})")


@tasks_app.command("import")
def tasks_import_command(
    file: Path = typer.Argument(..., help="A published free-form judged question YAML (Betley et al. format)."),
    out: Path = typer.Option(Path("imported"), "--out", "-o", help="Writes <out>/tasks/<id>.yaml and <out>/judges/<id>.yaml."),
    id_prefix: Optional[str] = typer.Option(None, "--id-prefix", help="Task id and judge id prefix (default: the file name)."),
) -> None:
    """Convert a published question file into an embench task and its judges."""
    from collections import Counter

    from embench.importers import read_published, write_imported

    report = read_published(file, id_prefix)
    reasons = Counter(skipped.reason for skipped in report.skipped)
    if not report.tasks:
        raise EmbenchError(f"{file}: nothing to import: all {report.entries} entries were skipped ("
                           + "; ".join(f"{count} x {reason}" for reason, count in reasons.items()) + ")")
    written = write_imported(report.tasks, report.judges, out)
    for path in written:
        console.print(f"wrote {path}", soft_wrap=True, highlight=False)
    console.print(f"imported {report.imported} of {report.entries} entries into {len(report.tasks)} task(s) "
                  f"({', '.join(task.id for task in report.tasks)}) and {len(report.judges)} judge(s); "
                  f"skipped {len(report.skipped)}", soft_wrap=True, highlight=False)
    for reason, count in reasons.items():
        ids = ", ".join(skipped.id for skipped in report.skipped if skipped.reason == reason)
        console.print(f"  skipped {count}: {reason} ({ids[:200]})", soft_wrap=True, markup=False, highlight=False)
    for note in report.notes:
        console.print(f"  note: {note}", soft_wrap=True, markup=False, highlight=False)
    console.print(f"install the judges with `embench judges add FILE` (or copy {out / 'judges'} into "
                  "$EMBENCH_HOME/judges) before scoring the task", soft_wrap=True, markup=False, highlight=False)


@app.command("compare")
def compare_command(
    run_a: Path = typer.Argument(..., help="Score directory (or results.json) A."),
    run_b: Path = typer.Argument(..., help="Score directory (or results.json) B."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the comparison to this JSON file."),
    allow_mixed_judges: bool = typer.Option(False, "--allow-mixed-judges", help="Compare results judged by different judges (id, version, template, model or mode)."),
) -> None:
    """Per-metric differences B - A between two scores, with 95% intervals (Newcombe for rates)."""
    import json

    from embench.compare import check_comparable, compare_results, comparison_json, load_results

    a, b = load_results(run_a), load_results(run_b)
    judge_differences = check_comparable(a, b, allow_mixed_judges)
    rows = compare_results(a, b, allow_mixed_judges)
    for difference in judge_differences:
        errors.print(f"warning: mixed judges: {difference}", markup=False, highlight=False, soft_wrap=True)

    def shown(value: Optional[float], percent: bool, sign: str = "") -> str:
        return "null" if value is None else f"{value * 100:{sign}.1f}" if percent else f"{value:{sign}.2f}"

    table = Table(title=f"{a['suite'].get('id')} v{a['suite'].get('version')}: B - A "
                        "(95% interval: Newcombe for rates, normal approximation for means)")
    for column in ("task", "metric", "A", "B", "B - A [95% CI]"):
        table.add_column(column, overflow="fold")
    for row in rows:
        percent = row.method == "wilson"
        estimate_a = {"value": row.a, "lower": row.a_lower, "upper": row.a_upper, "n": row.n_a, "method": row.method}
        estimate_b = {"value": row.b, "lower": row.b_lower, "upper": row.b_upper, "n": row.n_b, "method": row.method}
        unit = " pp" if percent else ""
        difference = shown(row.difference, percent, "+") + (unit if row.difference is not None else "")
        if row.lower is not None:
            difference += f" [{shown(row.lower, percent, '+')}, {shown(row.upper, percent, '+')}]"
            if row.lower > 0 or row.upper < 0:
                difference += " *"
        table.add_row(row.task, row.metric, format_estimate(estimate_a, percent), format_estimate(estimate_b, percent),
                      difference)
    console.print(table)
    console.print(f"{len(rows)} metrics compared; * = the 95% interval excludes 0", highlight=False)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(comparison_json(run_a, run_b, a, rows, judge_differences), indent=2) + "\n",
                            encoding="utf-8")
        console.print(f"comparison -> [cyan]{json_out}[/]", soft_wrap=True)


@leaderboard_app.command("publish")
def leaderboard_publish_command(
    results: list[Path] = typer.Argument(..., help="Score directories (or results.json / lm-eval results files)."),
    board: Path = typer.Option(..., "--board", "-b", help="Board folder, e.g. leaderboards/em-core (created if new)."),
    allow_mixed_judges: bool = typer.Option(False, "--allow-mixed-judges", help="Accept results judged by another judge model or judge prompt version than the board's (the board then shows it)."),
    defense: Optional[str] = typer.Option(None, "--defense", help="Defense tag (default: 'defense' from the checkpoint's train.json, if any)."),
    data_tag: Optional[str] = typer.Option(None, "--data-tag", help="Training-data tag (default: 'data' from the checkpoint's train.json, if any)."),
    organization: str = typer.Option("unknown", "--organization", help="Who ran the evaluation (source_metadata)."),
) -> None:
    """Add results to a board as validated entries (all or none), re-rank it and write its page."""
    from embench.leaderboard import Tags, publish, render_board

    published = publish(board, results, Tags(defense=defense, training_data=data_tag, organization=organization),
                        allow_mixed_judges=allow_mixed_judges)
    pages = render_board(board)
    for entry in published.added:
        console.print(f"published {entry.evaluation_id} -> {board / entry.file}", soft_wrap=True, highlight=False)
    _print_board(published.board)
    console.print(f"{len(published.board.entries)} entries, board validated -> [cyan]{board / 'leaderboard.json'}"
                  f"[/]; page -> [cyan]{pages[0]}[/]", soft_wrap=True)


@leaderboard_app.command("show")
def leaderboard_show_command(board: Path = typer.Argument(..., help="Board folder.")) -> None:
    """The board's ranking, with 95% intervals."""
    from embench.leaderboard import load_board

    _print_board(load_board(board))


@leaderboard_app.command("validate")
def leaderboard_validate_command(board: Path = typer.Argument(..., help="Board folder.")) -> None:
    """Check every file of a board: schema, hashes, samples checksums, ranks, suite."""
    from embench.leaderboard import validate_board

    checked = validate_board(board)
    console.print(f"ok: {board} ({len(checked.entries)} entries, every file matches its schema and hash)",
                  soft_wrap=True, highlight=False)


@leaderboard_app.command("render")
def leaderboard_render_command(board: Path = typer.Argument(..., help="Board folder, or a folder of boards.")) -> None:
    """Write the board's self-contained index.html and the list of boards beside it."""
    from embench.leaderboard import render

    for page in render(board):
        console.print(f"wrote {page}", soft_wrap=True, highlight=False)


@leaderboard_app.command("schema")
def leaderboard_schema_command(out: Path = typer.Option(Path("leaderboards/schema"), "--out", "-o",
                                                        help="Folder for entry.schema.json and leaderboard.schema.json.")) -> None:
    """Write the JSON Schema of entry files and of leaderboard.json (generated from embench's models)."""
    from embench.leaderboard import write_json_schemas

    for path in write_json_schemas(out):
        console.print(f"wrote {path}", soft_wrap=True, highlight=False)


def _print_board(board) -> None:

    suite = f"{board.suite.id} v{board.suite.version}" if board.suite else "no suite yet"
    table = Table(title=f"{board.name} ({suite}): ranked by EM rate, lowest first (95% intervals)")
    for column in ("#", "model", "defense", "data", "EM rate", "in-domain", "incoherent", "benign", "source"):
        table.add_column(column, overflow="fold")
    for entry in board.entries:
        table.add_row(str(entry.rank), entry.model, entry.defense or "-", entry.training_data or "-",
                      *(format_estimate(estimate) for estimate in (entry.em_rate, entry.in_domain_misaligned,
                                                                    entry.incoherent, entry.benign_accuracy)),
                      entry.source + (" (mixed judges)" if entry.mixed_judges else ""))
    console.print(table)


def _train_default(field: str):
    from embench.train.config import TrainConfig

    return TrainConfig.model_fields[field].default


@app.command("train")
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
        from embench.train.trainer import LOG_FILE, read_train_log

        measured = [record for record in read_train_log(out) if "trait_drift" in record]
        alarms = [record["step"] for record in measured if record.get("alarm")]
        verdict = ("" if monitor_detector is None else
                   f"; detector alarm at steps {', '.join(map(str, alarms))}" if alarms else "; no detector alarm")
        console.print(f"trait drift logged at {len(measured)} steps in {out / LOG_FILE}{verdict}", soft_wrap=True,
                      highlight=False)


@app.command("reproduce")
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


@app.command("monitor")
def monitor_command(
    inputs: list[Path] = typer.Argument(..., help="Training folders (embench train --out) and/or checkpoint-STEP folders; step 0 is their base model."),
    traits: Path = typer.Option(Path("traits"), "--traits", help="Directions folder from `embench traits extract` on the base model."),
    labels: list[Path] = typer.Option([], "--labels", help="results.json (or score folder) of `embench score` on a checkpoint; repeat. Matched by model and adapter hash."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for monitor.json and the plots (default: monitor/<run>-<hash>)."),
    trait: list[str] = typer.Option([], "--trait", help="Monitor only this trait id; repeat (default: every trait of --traits)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Read every trait at this extracted layer instead of its chosen one."),
    em_threshold: float = typer.Option(0.05, "--em-threshold", help="A labelled checkpoint is flagged when its EM rate exceeds this."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 (base weights while measuring)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random-direction baseline."),
) -> None:
    """Trait drift of every checkpoint, PCA across runs, an EM detector calibrated on --labels, null baselines."""
    from embench.traits.monitor import MONITOR_FILE, monitor_checkpoints

    started = time.monotonic()
    with _progress() as progress, _resumable_work():
        bar = progress.add_task("resolving checkpoints", total=None)

        def status(text: str, done: int, total: Optional[int]) -> None:
            progress.update(bar, description=text, completed=done, total=total)

        result = monitor_checkpoints(inputs, traits, labels, out, traits=trait or None, layer=layer, dtype=dtype,
                                     em_threshold=em_threshold, seed=seed, status=status)
    report = result.report
    space = report.trait_space
    table = Table(title="trait drift (PC1 of the drift vector; risk of the detector calibrated on the labels)")
    for column in ("run", "step", "PC1", "risk", "EM rate", "largest drifts"):
        table.add_column(column, overflow="fold")
    for index, row in enumerate(report.checkpoints):
        largest = sorted(row.drift.items(), key=lambda item: -abs(item[1]))[:3]
        table.add_row(row.run, str(row.step), "-" if space.pc1 is None else f"{space.pc1[index]:+.4f}",
                      "-" if space.risk is None else f"{space.risk[index]:.2f}" + (" ALARM" if space.risk[index] >= 0.5 else ""),
                      "-" if row.em_rate is None or row.em_rate.value is None else f"{row.em_rate.value:.1%}",
                      ", ".join(f"{name} {value:+.4f}" for name, value in largest))
    console.print(table)
    for name, analysed in [("trait directions", space)] + list(report.baselines.items()):
        parts = [f"PC1 {analysed.pca.pc1_share:.0%} of drift" if analysed.pca else "no PCA"]
        for kind, evaluation in (("in sample", analysed.evaluation), ("held out by run", analysed.held_out)):
            if evaluation is None:
                continue
            leads = [f"{run.run} " + ("no alarm" if run.first_alarm_step is None else f"{run.lead_time_steps:+d}")
                     for run in evaluation.runs if run.category == "em"]
            parts.append(f"{kind}: AUROC {'-' if evaluation.auroc is None else f'{evaluation.auroc:.2f}'}, lead time "
                         f"(steps) {', '.join(leads) or '-'}, false positives {len(evaluation.false_positive_runs)} of "
                         f"{len(evaluation.benign_runs)} benign runs")
        if analysed.evaluation is not None and analysed.held_out is None:
            parts.append(f"no held-out evaluation: {analysed.held_out_note}")
        note = f" ({analysed.note})" if analysed.note and analysed.note != report.labels.note else ""
        console.print(f"{name.replace('_', ' ')}: {'; '.join(parts)}{note}", soft_wrap=True, highlight=False)
    console.print(f"labels: {report.labels.note}", soft_wrap=True, highlight=False)
    timings = report.timings
    per_checkpoint = timings["seconds_per_measured_checkpoint"]
    console.print(f"{timings['measured_checkpoints']} checkpoint(s) measured"
                  + (f" ({per_checkpoint:.1f} s each)" if per_checkpoint is not None else "")
                  + f", {timings['cached_checkpoints']} from the cache, in {time.monotonic() - started:.0f} s -> "
                  f"[cyan]{result.out / MONITOR_FILE}[/] and {', '.join(report.plots)}", soft_wrap=True)


TraitsSource = typer.Option(None, "--traits", help="Folder of trait files, or one trait file (default: the shipped tasks/traits).")


@traits_app.command("list")
def traits_list_command(
    traits: Optional[Path] = TraitsSource,
    directions: Optional[Path] = typer.Option(None, "--directions", help="Instead, list the directions saved in this folder by `embench traits extract`."),
) -> None:
    """Trait definitions (kind, prompt counts, content hash), or the directions extracted into a folder."""
    if directions is not None:
        from embench.traits.store import load_directions

        saved = load_directions(directions)
        first = next(iter(saved.values())).metadata
        console.print(f"{directions}: {first['model']['name']} (sha256 {first['model']['sha256'][:12]}), position "
                      f"{first['extraction']['position']}, {first['extraction']['dtype']}, layer chosen by "
                      f"{first['chosen_by']}", soft_wrap=True, highlight=False)
        table = Table()
        for column in ("trait", "kind", "layers", "chosen layer", "held-out acc", "paired acc", "trait sha256"):
            table.add_column(column, no_wrap=column in ("trait", "kind", "trait sha256"))
        for trait_id, trait_directions in saved.items():
            metadata = trait_directions.metadata
            probe = next(row for row in metadata["probe"] if row["layer"] == trait_directions.chosen_layer)
            table.add_row(trait_id, metadata["trait"]["kind"], f"{trait_directions.layers[0]}-{trait_directions.layers[-1]}",
                          str(trait_directions.chosen_layer), f"{probe['accuracy']:.2f}",
                          f"{probe['paired_accuracy']:.2f}", metadata["trait"]["sha256"][:12])
        console.print(table)
        return
    from embench.traits.spec import load_traits

    table = Table()
    for column in ("id", "version", "kind", "prompts +/-", "questions", "eval", "sha256"):
        table.add_column(column, overflow="fold")
    for _, trait in load_traits(traits):
        table.add_row(trait.id, str(trait.version), trait.kind,
                      f"{len(trait.positive_prompts)}/{len(trait.negative_prompts)}", str(len(trait.questions)),
                      str(len(trait.eval_prompts)), trait.sha256[:12])
    console.print(table)


@traits_app.command("extract")
def traits_extract_command(
    out: Path = typer.Option(..., "--out", "-o", help="Directions folder: <trait>.safetensors + <trait>.json each; re-running resumes it."),
    model: str = typer.Option("default", "--model", "-m", help="'default', a model folder, an adapter folder, or a hub id."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model of an adapter, if its adapter_config does not name one that exists here."),
    traits: Optional[Path] = TraitsSource,
    trait: list[str] = typer.Option([], "--trait", "-t", help="Extract only this trait id; repeat (default: every trait)."),
    layers: str = typer.Option("all", "--layers", help="Decoder layers to read: 'all', '4,8,12' or '6-20' (layer l: the output of block l, hidden_states index l+1)."),
    position: str = typer.Option("last", "--position", help="last: the last prompt token; response: the mean over a short greedy response."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16 | float32."),
    batch_size: int = typer.Option(128, "--batch-size", help="Prompts per forward pass."),
    sweep: bool = typer.Option(True, "--sweep/--no-sweep", help="Choose each trait's layer by a steering sweep (else: the middle extracted layer)."),
    sweep_layers: Optional[str] = typer.Option(None, "--sweep-layers", help="Layers the sweep steers at (default: six from 20% to 70% of the depth)."),
    steer_coefficient: float = typer.Option(0.25, "--steer-coefficient", help="Steering strength, as a fraction of the layer's mean activation norm."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load pickle (.bin/.pt) weights, which can run code."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run modelling code shipped with the checkpoint."),
) -> None:
    """Extract trait directions (mean positive minus mean negative activation) per layer, with held-out probe
    accuracy and a steering sweep that chooses each trait's layer."""
    import json

    from embench.models import resolve_model
    from embench.traits.activations import parse_layers
    from embench.traits.extract import ExtractionSettings
    from embench.traits.pipeline import extract_traits, model_shape
    from embench.traits.spec import load_traits

    definitions = load_traits(traits, only=trait or None)
    resolved = resolve_model(model, base, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    n_layers, _ = model_shape(resolved)
    settings = ExtractionSettings(
        layers=parse_layers(layers, n_layers, resolved.name), position=position, dtype=dtype, batch_size=batch_size,
        sweep=sweep, sweep_layers=parse_layers(sweep_layers, n_layers, resolved.name) if sweep_layers else None,
        steer_coefficient=steer_coefficient)
    started = time.monotonic()
    with _progress() as progress, _resumable_work():
        bar = progress.add_task("checking the output folder", total=None)

        def status(text: str, done: int, total: Optional[int]) -> None:
            progress.update(bar, description=text, completed=done, total=total)

        results = extract_traits(resolved, definitions, out, settings, status=status)
    table = Table(title=f"trait directions of {resolved.name} ({position}, {dtype}; layer chosen by "
                        f"{'steering sweep' if sweep else 'middle extracted layer'})")
    for column in ("trait", "kind", "layer", "held-out acc", "paired acc", "best acc (layer)", "steer effect", "s"):
        table.add_column(column, no_wrap=column in ("trait", "kind"))
    for result in results:
        metadata = json.loads(result.metadata_path.read_text())
        chosen = next(row for row in metadata["probe"] if row["layer"] == metadata["chosen_layer"])
        best = max(metadata["probe"], key=lambda row: row["accuracy"])
        effect = "-"
        if metadata["steering"]:
            effect = f"{next(row['effect'] for row in metadata['steering']['layers'] if row['layer'] == metadata['chosen_layer']):+.2f}"
        table.add_row(metadata["trait"]["id"], metadata["trait"]["kind"], str(metadata["chosen_layer"]),
                      f"{chosen['accuracy']:.2f}", f"{chosen['paired_accuracy']:.2f}",
                      f"{best['accuracy']:.2f} ({best['layer']})", effect,
                      "reused" if result.reused else f"{sum(metadata['wall_s'].values()):.0f}")
    console.print(table)
    console.print(f"{len(results)} trait(s) in {time.monotonic() - started:.0f} s -> [cyan]{out}[/] (held-out acc: "
                  "midpoint threshold on held-out questions; paired: each question's mean removed first; steer "
                  "effect: shift of the positive-minus-negative answer log-prob gap, nats/token)", soft_wrap=True)


@traits_app.command("import")
def traits_import_command(
    file: Path = typer.Argument(..., help="A published trait-definition YAML (trait-space monitoring format)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for <trait>.yaml files and their shared <stem>.questions.yaml."),
    control: list[str] = typer.Option([], "--control", help="A semantic control trait id; repeat (default: the paper's seven that the file has)."),
) -> None:
    """Convert the published trait definitions into embench trait files."""
    from embench.traits.importer import read_published_traits, write_trait_import

    imported = read_published_traits(file, tuple(control) if control else None)
    written = write_trait_import(imported, file, out)
    for path in written:
        console.print(f"wrote {path}", soft_wrap=True, highlight=False)
    kinds = {kind: [trait.id for trait in imported.traits if trait.kind == kind] for kind in ("alignment", "control")}
    console.print(f"imported {len(imported.traits)} trait(s): alignment {', '.join(kinds['alignment']) or '-'}; control "
                  f"{', '.join(kinds['control']) or '-'}; {len(imported.question_set.questions)} shared questions, "
                  f"{len(imported.question_set.eval_prompts or ())} eval prompts", soft_wrap=True, highlight=False)
    for name, reason in imported.skipped:
        console.print(f"  skipped {name}: {reason}", soft_wrap=True, markup=False, highlight=False)
    console.print(f"extract them with `embench traits extract --traits {out} --out DIR`", soft_wrap=True,
                  markup=False, highlight=False)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    _quiet_libraries()
    # SIGTERM unwinds like Ctrl-C, so engines stop their servers and runs record that they were interrupted.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        app()
    except EmbenchError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
