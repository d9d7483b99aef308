"""``embench score``: a suite's tasks -> generations -> judgments -> metrics -> ``results.json``.

The score directory holds one run directory per task (``tasks/<task-id>/``, resumable like any run), and at the
top ``results.json`` (modelled on lm-eval's results file, with the whole config and every judge's identity),
``samples.jsonl`` (every generation with its judgments) and PNG plots. Re-invoking the same command on the same
directory resumes generation and judging and writes identical results.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import embench
from embench.engines import EngineOptions, check_engine, open_engine
from embench.errors import EmbenchError
from embench.files import (
    check_writable_folder,
    embench_git_sha,
    now,
    read_json,
    read_json_object,
    write_json_atomic,
    write_text_atomic,
)
from embench.generate import GenerationJob, check_sample_count, plan_job, run_jobs
from embench.hashing import file_safe, sha256_file, sha256_json
from embench.judges import JudgeRegistry, JudgeSpec
from embench.judges.judging import judge_run
from embench.judges.settings import JudgeSettings, judge_settings
from embench.judges.spec import JUDGE_IDENTITY
from embench.judges.trained import TRAINED_MODE, load_trained_judge
from embench.layout import (
    GENERATIONS_FILE,
    JUDGMENTS_FILE,
    RESULTS_FILE,
    RUN_FILE,
    SAMPLES_FILE,
    SCORE_STATE_FILE,
    task_run_dir,
)
from embench.metrics import Estimate, mean_score, rate, verdict_counts
from embench.models import ResolvedModel, resolve_model
from embench.progress import Status
from embench.results import EM_RATE, INCOHERENT_RATE, ScoreResults
from embench.runs import load_records
from embench.sampling import SamplingConfig
from embench.tasks import PUBLISHED_MISALIGNED, RateRule, Suite, Task, find_suite


@dataclass
class ScoreSpec:
    """What ``embench score`` takes; ``None`` means the suite's or task's own setting."""

    checkpoint: str
    suite: str = "em-core"
    samples: int | None = None
    max_tokens: int | None = None
    seed: int | None = None
    engine: str = "vllm"
    base: str | None = None
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_mode: str | None = None
    judge_engine: str | None = None
    judges_dir: Path | None = None
    out: Path | None = None
    # float32 by default: vLLM's bf16 kernels round differently for different batch mixes, so a resumed bf16 run
    # can draw different text for the samples it re-does; in float32 a resumed score is byte-identical to an
    # uninterrupted one (measured: bf16 4 of 24 samples differed, float32 none; float32 costs ~1.4x here).
    options: EngineOptions = field(default_factory=lambda: EngineOptions(dtype="float32"))
    allow_pickle: bool = False
    trust_remote_code: bool = False


@dataclass
class ScoreRun:
    """What a finished score is: its directory, ``results.json`` there, and the results themselves."""

    out: Path
    results_path: Path
    results: ScoreResults
    timings_s: dict[str, float]


@dataclass
class PreparedScore:
    spec: ScoreSpec
    model: ResolvedModel
    suite: Suite
    tasks: list[Task]
    judges: dict[str, dict[str, JudgeSpec]]  # task id -> metric -> judge
    judge: JudgeSettings
    out: Path
    self_judging: bool  # the checkpoint judges itself on vLLM: one engine serves generation and judging
    state: dict  # score.json: read (and checked) once, here, or new


def task_sampling(task: Task, suite: Suite, spec: ScoreSpec) -> tuple[int, SamplingConfig]:
    """Samples per question and sampling for one task: the task's, then the suite's overrides, then the flags."""
    updates: dict = {}
    if "max_tokens" in suite.overrides:
        updates["max_tokens"] = int(suite.overrides["max_tokens"])
    if "temperature" in suite.overrides:
        updates["temperature"] = suite.overrides["temperature"]
    if spec.max_tokens is not None:
        updates["max_tokens"] = spec.max_tokens
    if spec.seed is not None:
        updates["seed"] = spec.seed
    sampling = SamplingConfig.model_validate({**task.sampling.model_dump(), **updates})
    samples = spec.samples or int(suite.overrides.get("samples_per_question", task.samples_per_question))
    return samples, sampling


def plan_task(prepared: PreparedScore, task: Task) -> GenerationJob:
    """A task's samples, planned into its run directory inside the score directory."""
    samples, sampling = task_sampling(task, prepared.suite, prepared.spec)
    return plan_job(prepared.model, task.prompts(), task_run_dir(prepared.out, task.id), engine=prepared.spec.engine,
                    n=task.sample_counts(samples), sampling=sampling, options=prepared.spec.options,
                    prompts_source=f"task:{task.id}@{task.version}")


def prepare_score(spec: ScoreSpec) -> PreparedScore:
    """Check everything (suite, tasks, judges, samples, engine, model) before any file is written."""
    if spec.samples is not None and spec.samples < 1:
        raise EmbenchError(f"--samples must be at least 1 (got {spec.samples})")
    check_engine(spec.engine, spec.options)
    suite = find_suite(spec.suite)
    tasks = suite.load_tasks()
    check_sample_count(sum(len(task.questions) * task_sampling(task, suite, spec)[0] for task in tasks))
    registry = JudgeRegistry.default(spec.judges_dir)
    judges = {task.id: {metric: registry.get(judge_id) for metric, judge_id in task.judges.items()} for task in tasks}
    settings = judge_settings([judge for task_judges in judges.values() for judge in task_judges.values()],
                              model=spec.judge_model, mode=spec.judge_mode, base_url=spec.judge_base_url,
                              engine=spec.judge_engine)
    model = resolve_model(spec.checkpoint, spec.base, allow_pickle=spec.allow_pickle,
                          trust_remote_code=spec.trust_remote_code)
    self_judging = False
    if settings.mode == TRAINED_MODE:  # a trained judge is checked now (weights, hash, base), not after generating
        trained = load_trained_judge(settings.model)
        trained.resolve_base()
        for task_judges in judges.values():
            for judge in task_judges.values():
                trained.check_output(judge.id)
    elif settings.base_url is None:  # a local judge model is checked now, not after the generation
        check_engine(settings.local_engine)
        self_judging = (settings.local_engine == "vllm" and spec.engine == "vllm"
                        and resolve_model(settings.model).identity == model.identity)
    else:  # an endpoint is checked now, not after the generation
        from embench.judges.openai_backend import check_judge_endpoint

        check_judge_endpoint(settings.base_url, settings.api_key_env)
    out = spec.out or default_score_dir(model, suite, spec)
    check_writable_folder(out)
    state_path = out / SCORE_STATE_FILE
    state = read_json(state_path, f"the {SCORE_STATE_FILE} of an `embench score` directory") if state_path.is_file() \
        else {"created": now()}
    return PreparedScore(spec=spec, model=model, suite=suite, tasks=tasks, judges=judges, judge=settings, out=out,
                         self_judging=self_judging, state=state)


def default_score_dir(model: ResolvedModel, suite: Suite, spec: ScoreSpec) -> Path:
    name = file_safe(model.name.lower())
    key = sha256_json({"model": model.identity, "suite": suite.sha256, "samples": spec.samples,
                       "max_tokens": spec.max_tokens, "seed": spec.seed, "engine": spec.engine,
                       "judge": [spec.judge_model, spec.judge_base_url, spec.judge_mode]})
    return Path("runs") / f"score-{suite.id}-{name}-{key[:12]}"


def run_score(prepared: PreparedScore, status: Status | None = None) -> ScoreRun:
    """Generate, judge and measure every task of the suite into ``results.json``."""
    spec, model, out = prepared.spec, prepared.model, prepared.out
    say = status or (lambda *args: None)
    out.mkdir(parents=True, exist_ok=True)
    state_path, state = out / SCORE_STATE_FILE, dict(prepared.state)
    write_json_atomic(state_path, state)
    generation_tasks = [task for task in prepared.tasks if task.questions]
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - clock
        clock = time.perf_counter()

    jobs = [plan_task(prepared, task) for task in generation_tasks]  # checked before the engine loads
    engine_info = judge_info = None
    judged_tasks = [task for task in generation_tasks if prepared.judges[task.id]]
    with ExitStack() as generation_engine:
        backend = generation_engine.enter_context(open_engine(spec.engine, model, spec.options)) \
            if generation_tasks else None
        if backend is not None:
            lap("model_load")
            engine_info = backend.info()
            # One engine submission for the whole suite: the batch is every task's samples, not one task's.
            run_jobs(jobs, backend, progress=lambda done, total: say(f"generating {prepared.suite.id}", done, total))
            lap("generation")
        if judged_tasks:
            if prepared.self_judging and backend is not None:
                from embench.judges.vllm_backend import VLLMJudgeBackend

                judge_backend = VLLMJudgeBackend(model, spec.options, llm=backend.llm)
            else:
                generation_engine.close()  # free the generation engine before a judge model loads
                judge_backend = prepared.judge.open(spec.options)
            with judge_backend:
                lap("judge_load")
                judge_info = judge_backend.info()
                for task in judged_tasks:
                    for metric, judge in prepared.judges[task.id].items():
                        judge_run(task_run_dir(out, task.id), judge, judge_backend, prepared.judge.mode,
                                  progress=lambda done, total, task=task, metric=metric:
                                  say(f"judging {task.id}: {metric}", done, total))
                lap("judging")
    extra_results = {}
    for task in prepared.tasks:
        if task.perplexity_file is not None:
            say(f"perplexity {task.id}", 0, None)
            from embench.perplexity import perplexity

            extra_results[task.id] = {"perplexity": perplexity(model, task.perplexity_text())}
            lap("perplexity")
        elif task.lm_eval is not None:
            say(f"lm-eval {task.id}", 0, None)
            from embench.benign import run_lm_eval

            extra_results[task.id] = run_lm_eval(model.base_path, task=task.lm_eval["task"],
                                                 include_path=task.resolve(task.lm_eval["include_path"]),
                                                 adapter_path=model.adapter_path)
            lap("benign")
    say("metrics", 0, None)
    results = build_results(prepared, state["created"], engine_info, judge_info, extra_results)
    samples = write_samples(prepared, out / SAMPLES_FILE)
    results.samples_sha256 = sha256_file(out / SAMPLES_FILE)
    results.save(out / RESULTS_FILE)
    from embench.plots import write_plots

    write_plots(out, results.per_question, samples, _misaligned_rule(prepared.tasks))
    lap("metrics")
    # Timings describe this invocation (a resumed one skips finished work), so they live beside the results.
    state["last_timings_s"] = timings
    write_json_atomic(state_path, state)
    return ScoreRun(out=out, results_path=out / RESULTS_FILE, results=results, timings_s=timings)


def _misaligned_rule(tasks: list[Task]) -> RateRule:
    """The misaligned rule of the suite's tasks that rate aligned and coherent answers (the published one if none)."""
    return next((rule for task in tasks if (rule := task.rates.get(EM_RATE)) is not None
                 and {condition.metric for condition in rule.all} >= {"aligned", "coherent"}), PUBLISHED_MISALIGNED)


def joined_samples(out: Path, task: Task, judges: dict[str, JudgeSpec]) -> list[dict]:
    """Each generation of a task with, per metric, the judgment its judge made of it (None if none yet)."""
    run_dir = task_run_dir(out, task.id)
    generations = load_records(run_dir / GENERATIONS_FILE)
    judgments = load_records(run_dir / JUDGMENTS_FILE)
    # A judge file's aggregation may change without its version (an imported judge read the published way): a
    # judgment read the other way is not this judge's.
    by_generation: dict[tuple[str, str, int, str], dict] = {}
    for record in judgments.values():
        by_generation[(record["generation_key"], record["judge_id"], record["judge_version"],
                       record.get("aggregation") or "embench")] = record
    rows = []
    for generation in sorted(generations.values(), key=lambda g: (g["prompt_id"], g["sample_index"])):
        row = {"task": task.id, **{k: generation[k] for k in ("key", "prompt_id", "sample_index", "messages",
                                                                 "completion", "finish_reason", "metadata")},
               "judgments": {}}
        for metric, judge in judges.items():
            record = by_generation.get((generation["key"], judge.id, judge.version, judge.aggregation))
            row["judgments"][metric] = None if record is None else {
                **{key: record[key] for key in (*JUDGE_IDENTITY, "status", "score", "verdict", "valid_mass")},
                **({"aggregation": record["aggregation"]} if "aggregation" in record else {})}
        rows.append(row)
    return rows


def _judgment_view(row: dict) -> dict:
    return {metric: judgment or {} for metric, judgment in row["judgments"].items()}


def task_metrics(task: Task, rows: list[dict]) -> dict[str, dict]:
    views = [_judgment_view(row) for row in rows]
    metrics: dict[str, Estimate | dict] = {}
    for name, rule in task.rates.items():
        metrics[name] = rate(views, rule)
    for metric in task.judges:
        metrics[f"{metric}_mean"] = mean_score(views, metric)
        metrics[f"{metric}_verdicts"] = verdict_counts(views, metric)
    return {name: value.model_dump() if isinstance(value, Estimate) else value for name, value in metrics.items()}


def build_results(prepared: PreparedScore, created: str, engine_info, judge_info, extra_results) -> ScoreResults:
    suite, out = prepared.suite, prepared.out
    results, configs, versions, n_samples, judges_used, per_question = {}, {}, {}, {}, {}, {}
    pooled: list[dict] = []
    for task in prepared.tasks:
        configs[task.id] = {**task.model_dump(mode="json"), "sha256": task.sha256}
        versions[task.id] = task.version
        if task.questions:
            rows = joined_samples(out, task, prepared.judges[task.id])
            results[task.id] = task_metrics(task, rows)
            samples, sampling = task_sampling(task, suite, prepared.spec)
            n_samples[task.id] = {"original": len(task.questions) * samples, "effective": len(rows)}
            configs[task.id]["run"] = {"samples_per_question": samples, "sampling": sampling.model_dump()}
            judges_used[task.id] = {metric: {**judge.identity(judge_info["judge_model"], prepared.judge.mode),
                                             "backend": judge_info}
                                    for metric, judge in prepared.judges[task.id].items()} if judge_info else {}
            if "coherent" in task.judges:
                pooled.extend(_judgment_view(row) for row in rows)
            per_question[task.id] = question_metrics(task, rows)
        else:
            results[task.id] = extra_results.get(task.id, {})
    versions[f"suite:{suite.id}"] = suite.version
    coherence = {"coherent_mean": mean_score(pooled, "coherent").model_dump(), "incoherent": None}  # set below
    for task_id, extra in extra_results.items():
        if "perplexity" in extra:
            coherence["perplexity"] = extra["perplexity"]
    model = prepared.model
    scored = ScoreResults.model_validate({
        "results": results,
        "groups": {suite.id: {"coherence": coherence}},
        "per_question": per_question,
        "configs": configs,
        "versions": versions,
        "n-samples": n_samples,
        "config": {
            "model": model.reference, "model_name": model.name, "model_sha": model.base_sha256,
            "adapter_sha": model.adapter_sha256, "model_provenance": model.provenance(),
            "engine": engine_info, "dtype": (engine_info or {}).get("dtype"),
            "chat_template_sha256": _chat_template_sha(out, prepared.tasks),
            "seed": prepared.spec.seed if prepared.spec.seed is not None else 0,
        },
        "judges": judges_used,
        "suite": {"id": suite.id, "version": suite.version, "sha256": suite.sha256, "tasks": list(suite.tasks),
                  "overrides": suite.overrides},
        "date": created,
        "embench_version": embench.__version__,
        "embench_git_sha": embench_git_sha(),
    })
    # The suite's incoherent rate is the headline one: each task's own incoherent rate, pooled.
    incoherent = scored.pooled(INCOHERENT_RATE)
    scored.groups[suite.id]["coherence"]["incoherent"] = incoherent.model_dump() if incoherent else None
    return scored


def question_metrics(task: Task, rows: list[dict]) -> dict[str, dict]:
    """Each rate per question (first-plot style), with its interval."""
    by_question: dict[str, list[dict]] = {}
    for row in rows:
        by_question.setdefault(row["metadata"].get("question", row["prompt_id"]), []).append(_judgment_view(row))
    return {question: {name: rate(views, rule).model_dump() for name, rule in task.rates.items()}
            for question, views in sorted(by_question.items())}


def _chat_template_sha(out: Path, tasks: list[Task]) -> str | None:
    for task in tasks:
        run_file = task_run_dir(out, task.id) / RUN_FILE
        if run_file.is_file():
            config = read_json_object(run_file, "an embench run record").get("config")
            if not isinstance(config, dict):
                raise EmbenchError(f"{run_file}: not an embench run record (no 'config' object): restore or delete it")
            return config.get("chat_template_sha256")
    return None


def write_samples(prepared: PreparedScore, path: Path) -> list[dict]:
    """Every generation with its judgments, written whole through a temporary file; the rows are returned."""
    rows = [row for task in prepared.tasks if task.questions
            for row in joined_samples(prepared.out, task, prepared.judges[task.id])]
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows))
    return rows
