"""A finished ``embench score`` directory as inspect logs: one ``.eval`` file per task, which ``inspect view``
opens and ``inspect_ai.log.read_eval_log`` reads.

Each log holds the task's samples as embench generated them (the messages, the completion, the judges' scores and
verdicts with each judge's identity), the task's metrics as ``results.json`` has them (a rate with no usable
sample is absent, not 0), and the run's provenance in the log's metadata. The samples come from ``samples.jsonl``,
checked against the ``samples_sha256`` in ``results.json`` first. A log's name derives from the results' checksum,
so exporting the same directory again rewrites the same files.
"""

from __future__ import annotations

from pathlib import Path

from inspect_ai.log import (
    EvalConfig,
    EvalDataset,
    EvalLog,
    EvalMetric,
    EvalPlan,
    EvalPlanStep,
    EvalResults,
    EvalSample,
    EvalScore,
    EvalSpec,
    EvalStats,
    write_eval_log,
)
from inspect_ai.model import (
    ChatMessageAssistant,
    ChatMessageSystem,
    ChatMessageUser,
    GenerateConfig,
    ModelOutput,
)
from inspect_ai.scorer import Score

from embench import __version__
from embench.errors import EmbenchError
from embench.hashing import file_safe, sha256_json
from embench.results import SampleRow, ScoreResults

SCORER = "embench_judges"  # the scorer name the inspect tasks of embench.inspectai.tasks use too


def export_inspect_logs(score_dir: Path, out: Path) -> list[Path]:
    """Write one inspect log per task of ``score_dir`` that generated samples into ``out``; their paths."""
    results = ScoreResults.load(score_dir)
    samples = results.load_samples(Path(score_dir))
    written = []
    for task in results.results:
        rows = [row for row in samples if row.task == task]
        if not rows:
            continue
        log = _task_log(results, task, rows)
        path = Path(out) / f"{log.eval.created[:19].replace(':', '-')}_{file_safe(task)}_{log.eval.task_id}.eval"
        try:
            write_eval_log(log, str(path))
        except OSError as exc:
            raise EmbenchError(f"cannot write {path} ({exc.strerror or exc}): choose another --out") from None
        written.append(path)
    if not written:
        raise EmbenchError(f"{score_dir}: no task generated samples: nothing to export")
    return written


def _task_log(results: ScoreResults, task: str, rows: list[SampleRow]) -> EvalLog:
    config, task_config = results.config, results.configs[task]
    run = task_config.run or {}
    sampling = run.get("sampling") or {}
    created = results.date or "1970-01-01T00:00:00+00:00"
    task_id = sha256_json([results.samples_sha256, task])[:22]
    generate_config = GenerateConfig(temperature=sampling.get("temperature"), top_p=sampling.get("top_p"),
                                     max_tokens=sampling.get("max_tokens"), seed=sampling.get("seed"))
    provenance = {"model_sha256": config.model_sha, "adapter_sha256": config.adapter_sha, "engine": config.engine,
                  "dtype": config.dtype, "chat_template_sha256": config.chat_template_sha256,
                  "task_sha256": task_config.sha256, "suite": results.suite.model_dump(mode="json"),
                  "judges": results.judges.get(task, {}), "samples_sha256": results.samples_sha256,
                  "embench_version": results.embench_version, "embench_git_sha": results.embench_git_sha,
                  "min_tokens": sampling.get("min_tokens")}
    metrics = _metrics(results.results[task])
    spec = EvalSpec(
        created=created, task=task, task_id=task_id, task_version=task_config.version or 0,
        task_registry_name=f"embench/{task}", run_id=task_id,
        dataset=EvalDataset(name=task, samples=len(rows), sample_ids=[_sample_id(row) for row in rows]),
        model=config.model_name, config=EvalConfig(epochs=1), packages={"embench": __version__},
        metadata={key: value for key, value in provenance.items() if value is not None})
    return EvalLog(
        status="success", eval=spec,
        plan=EvalPlan(steps=[EvalPlanStep(solver="embench score", params=dict(sampling))], config=generate_config),
        results=EvalResults(total_samples=len(rows), completed_samples=len(rows), scores=[EvalScore(
            name=SCORER, scorer=SCORER, scored_samples=len(rows), unscored_samples=0, metrics=metrics)]),
        stats=EvalStats(started_at=created, completed_at=created),
        samples=[_sample(row, config.model_name) for row in rows])


def _metrics(values: dict) -> dict[str, EvalMetric]:
    """Each estimate of the task's results as inspect's task reports it: value, 95% bounds and n."""
    metrics = {}
    for name, estimate in values.items():
        if not (isinstance(estimate, dict) and "n" in estimate and "method" in estimate):
            continue
        for key, value in ((name, estimate.get("value")), (f"{name}_lower", estimate.get("lower")),
                           (f"{name}_upper", estimate.get("upper")), (f"{name}_n", estimate["n"])):
            if value is not None:
                metrics[key] = EvalMetric(name=key, group="rates", value=float(value))
    return metrics


def _sample_id(row: SampleRow) -> str:
    return f"{row.prompt_id}/{row.sample_index}"


def _sample(row: SampleRow, model: str) -> EvalSample:
    messages = [ChatMessageSystem(content=message["content"]) if message["role"] == "system" else
                ChatMessageUser(content=message["content"]) if message["role"] == "user" else
                ChatMessageAssistant(content=message["content"]) for message in row.messages]
    judgments = {metric: judgment or {} for metric, judgment in row.judgments.items()}
    return EvalSample(
        id=_sample_id(row), epoch=1, input=messages, target="",
        messages=[*messages, ChatMessageAssistant(content=row.completion, model=model)],
        output=ModelOutput.from_content(model=model, content=row.completion,
                                        stop_reason="max_tokens" if row.finish_reason == "length" else "stop"),
        scores={SCORER: Score(value={metric: judgment.get("score") for metric, judgment in judgments.items()},
                              answer=row.completion, metadata={"judgments": judgments})},
        metadata={**row.metadata, "prompt_id": row.prompt_id, "sample_index": row.sample_index, "key": row.key})
