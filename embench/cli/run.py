"""generate, judge, score and compare: the commands that produce and read runs."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from embench.api import JudgeOptions
from embench.cli._ui import (
    JUDGE_OPTIONS,
    PARALLEL_OPTIONS,
    JudgesDir,
    OptionGroup,
    Verbose,
    console,
    errors,
    grouped,
    library_output,
    with_progress,
)
from embench.engines.base import KV_CACHE_GIB, EngineOptions
from embench.files import check_writable_file, write_text_atomic
from embench.layout import LIBRARY_LOG_FILE
from embench.metrics import format_estimate

SAMPLING = OptionGroup(
    dict,
    temperature=(Optional[float], typer.Option(None, help="Default: the task's, else 1.0.")),
    top_p=(Optional[float], typer.Option(None, "--top-p")),
    max_tokens=(Optional[int], typer.Option(None, "--max-tokens")),
    seed=(Optional[int], typer.Option(None, "--seed")),
)
ENDPOINT = OptionGroup(
    dict,
    base_url=(Optional[str], typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (openai engine); comma-separated for several, requests spread over them.")),
    api_key_env=(str, typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key.")),
    concurrency=(int, typer.Option(8, "--concurrency", help="Requests in flight at once (openai engines).")),
)


@grouped
def generate_command(
    model: str = typer.Option("default", "--model", "-m", help="'default', a model folder, an adapter folder, or a hub id."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL file: one {id, messages} or {id, prompt, system} per line."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="A task id under tasks/ (or a task YAML file)."),
    n: Optional[int] = typer.Option(None, "-n", help="Samples per prompt (default: the task's, else 1)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<model>-<hash>); re-running resumes it."),
    engine: str = typer.Option("vllm", "--engine", "-e", help="vllm | vllm-server | openai | hf"),
    base: Optional[str] = typer.Option(None, "--base", help="Base model of an adapter, if its adapter_config does not name one that exists here."),
    sampling: dict = SAMPLING,
    endpoint: dict = ENDPOINT,
    kv_cache_gib: float = typer.Option(KV_CACHE_GIB, "--kv-cache-gib", help="vLLM KV cache on CPU, in GiB."),
    max_model_len: int = typer.Option(2048, "--max-model-len"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Default: for vLLM bfloat16 where the hardware computes it natively, else float32; float32 for hf."),
    parallel: dict = PARALLEL_OPTIONS,
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load pickle (.bin/.pt) weights, which can run code."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run modelling code shipped with the checkpoint."),
    verbose: bool = Verbose,
) -> None:
    """Generate samples from a model into a resumable run directory."""
    from embench.api import GenerateSpec, run_generate

    spec = GenerateSpec(model=model, base=base, prompts=prompts, task=task, n=n, out=out, engine=engine, **sampling,
                        **endpoint, **parallel, kv_cache_gib=kv_cache_gib, max_model_len=max_model_len, dtype=dtype,
                        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    started = time.monotonic()

    def prepare_and_generate(status):
        prepared = spec.prepare(status=status)
        status(f"starting engine {engine}")
        # without --out the run directory is named once the engine is known: the log goes beside it, in runs/
        with library_output((prepared.out or Path("runs")) / LIBRARY_LOG_FILE, verbose):
            return run_generate(prepared, progress=lambda done, total: status(f"generating ({engine})", done, total))

    result = with_progress("resolving model", prepare_and_generate)
    console.print(f"[bold]{result.generated}[/] new samples, {result.reused} reused, in "
                  f"{time.monotonic() - started:.1f} s -> [cyan]{result.run_dir}[/]")
    _print_examples(result.run_dir)


def _print_examples(run_dir: Path, count: int = 4) -> None:
    from embench.runs import read_generations

    table = Table(title="first samples", show_lines=True)
    table.add_column("prompt")
    table.add_column("completion")
    for generation in list(read_generations(run_dir))[:count]:
        table.add_row(generation.messages[-1].content, generation.completion[:300])
    console.print(table)


@grouped
def judge_command(
    run_dir: Path = typer.Argument(..., help="A run directory written by `embench generate` (or `score`)."),
    judge: list[str] = typer.Option(["aligned"], "--judge", "-j", help="Judge id (or id@version); repeat for several."),
    options: JudgeOptions = JUDGE_OPTIONS,
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env"),
    concurrency: int = typer.Option(32, "--concurrency", help="Judge requests in flight (endpoints)."),
    judges_dir: Optional[Path] = JudgesDir,
    verbose: bool = Verbose,
) -> None:
    """Score an existing run with judges, without regenerating anything."""
    from embench.api import JudgeRunSpec, run_judging
    from embench.layout import JUDGMENTS_FILE

    prepared = JudgeRunSpec(run_dir=run_dir, judges=judge, judges_dir=judges_dir, judge=replace(
        options, api_key_env=api_key_env, concurrency=concurrency)).prepare()

    def judge_all(status) -> None:
        def report(spec, result) -> None:
            console.print(f"{spec.key}: {result.judged} judged, {result.cached} from cache, {result.reused} already "
                          f"done, {result.failed} failed (re-run to retry them)")

        with library_output(run_dir / LIBRARY_LOG_FILE, verbose):
            run_judging(prepared, finished=report, progress=lambda spec, done, total: status(
                f"judging {spec.key} ({prepared.settings.mode})", done, total))

    with_progress("starting judge", judge_all)
    console.print(f"judgments -> [cyan]{run_dir / JUDGMENTS_FILE}[/]")


@grouped
def score_command(
    checkpoint: str = typer.Argument("default", help="'default', a model folder, an adapter folder, or a hub id."),
    suite: str = typer.Option("em-core", "--suite", help="A suite id under tasks/suites (em-core, em-full) or a file."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Samples per question (default: the suite's / task's)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    engine: str = typer.Option("vllm", "--engine", "-e", help="Generation engine: vllm | vllm-server | hf."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model of an adapter checkpoint."),
    judge: JudgeOptions = JUDGE_OPTIONS,
    judges_dir: Optional[Path] = JudgesDir,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Score directory (default: runs/score-<suite>-<model>-<hash>); re-running resumes it."),
    kv_cache_gib: float = typer.Option(KV_CACHE_GIB, "--kv-cache-gib", help="vLLM KV cache on CPU, in GiB."),
    dtype: str = typer.Option("float32", "--dtype", help="Generation dtype. float32 makes a resumed run identical to an uninterrupted one; bfloat16 is faster (and usual on GPUs) but batch-dependent."),
    parallel: dict = PARALLEL_OPTIONS,
    allow_pickle: bool = typer.Option(False, "--allow-pickle"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    verbose: bool = Verbose,
) -> None:
    """Score a checkpoint on an EM suite: generate, judge, compute metrics, write results.json."""
    from embench.score import ScoreSpec, prepare_score, run_score

    spec = ScoreSpec(checkpoint=checkpoint, suite=suite, samples=samples, max_tokens=max_tokens, seed=seed,
                     engine=engine, base=base, judge_model=judge.model, judge_base_url=judge.base_url,
                     judge_mode=judge.mode, judge_engine=judge.engine, judges_dir=judges_dir, out=out,
                     options=EngineOptions(kv_cache_gib=kv_cache_gib, dtype=dtype, **parallel),
                     allow_pickle=allow_pickle,
                     trust_remote_code=trust_remote_code)
    started = time.monotonic()

    def prepare_and_score(status):
        prepared = prepare_score(spec)
        with library_output(prepared.out / LIBRARY_LOG_FILE, verbose):
            return run_score(prepared, status=status)

    scored = with_progress("checking suite, judges and model", prepare_and_score)
    console.print(f"scored in {time.monotonic() - started:.0f} s -> [cyan]{scored.results_path}[/]")
    _print_results(scored.results)


def _print_results(results) -> None:
    import json

    table = Table(title=f"{results.suite.id} v{results.suite.version}: {results.config.model_name}")
    for column in ("task", "metric", "value [95% CI]"):
        table.add_column(column, overflow="fold")
    for task_id, metrics in results.results.items():
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


def compare_command(
    run_a: Path = typer.Argument(..., help="Score directory (or results.json) A."),
    run_b: Path = typer.Argument(..., help="Score directory (or results.json) B."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the comparison to this JSON file."),
    allow_mixed_judges: bool = typer.Option(False, "--allow-mixed-judges", help="Compare results judged by different judges (id, version, template, model or mode)."),
) -> None:
    """Per-metric differences B - A between two scores, with 95% intervals (Newcombe for rates)."""
    import json

    from embench.compare import check_comparable, compare_results, comparison_json
    from embench.results import ScoreResults

    if json_out is not None:
        check_writable_file(json_out, "--json")
    a, b = ScoreResults.load(run_a), ScoreResults.load(run_b)
    judge_differences = check_comparable(a, b, allow_mixed_judges)
    rows = compare_results(a, b, allow_mixed_judges)
    for difference in judge_differences:
        errors.print(f"warning: mixed judges: {difference}", markup=False, highlight=False, soft_wrap=True)

    console.print(_comparison_table(a, rows))
    console.print(f"{len(rows)} metrics compared; * = the 95% interval excludes 0", highlight=False)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(json_out, json.dumps(comparison_json(run_a, run_b, a, rows, judge_differences), indent=2)
                          + "\n")
        console.print(f"comparison -> [cyan]{json_out}[/]", soft_wrap=True)


def _comparison_table(a, rows) -> Table:
    def shown(value: Optional[float], percent: bool, sign: str = "") -> str:
        return "null" if value is None else f"{value * 100:{sign}.1f}" if percent else f"{value:{sign}.2f}"

    table = Table(title=f"{a.suite.id} v{a.suite.version}: B - A "
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
    return table
