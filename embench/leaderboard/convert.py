"""Results -> leaderboard entries: from an ``embench score`` directory, or from an lm-eval results JSON file.

Every check that concerns one result alone happens here, before any board is touched: the samples file must
match the checksum ``results.json`` recorded, and the model hash, every task hash and every judge's identity must
be present. The numbers a board ranks by are pooled from the per-task results:

the headline rates of :mod:`embench.results` (EM rate, in-domain misaligned, incoherent, benign accuracy), each
null where the results hold no task of that family.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from embench.benign import METRIC as BENIGN_METRIC
from embench.benign import task_config_sha256
from embench.errors import EmbenchError
from embench.files import read_json
from embench.hashing import file_safe, sha256_file, sha256_json, sha256_text
from embench.judges import JudgeRegistry
from embench.judges.spec import JUDGE_IDENTITY
from embench.layout import RESULTS_FILE, TRAIN_FILE
from embench.leaderboard.instances import instance_records, instances_text
from embench.leaderboard.schema import (
    EMBENCH_RECORD_VERSION,
    SCHEMA_VERSION,
    UNKNOWN_DEVELOPER,
    ConfidenceInterval,
    DetailedResults,
    EmbenchBlock,
    EmbenchRecord,
    Entry,
    EvalLibrary,
    EvaluationResult,
    GenerationArgs,
    GenerationConfig,
    InferenceEngine,
    JudgeConfig,
    JudgeIdentity,
    LLMScoring,
    MetricConfig,
    ModelDetails,
    ModelInfo,
    ModelRef,
    ScoreDetails,
    SourceData,
    SourceMetadata,
    StandardError,
    SuiteRef,
    Uncertainty,
    embench_path,
    samples_path,
)
from embench.metrics import BOOTSTRAP_RESAMPLES, Estimate, pool_estimates, rate
from embench.models import HUB_ID, resolve_model
from embench.results import SampleRow, ScoreResults, TrainRecord
from embench.tasks import RateRule


@dataclass
class Converted:
    """An entry, its embench record, where it came from, and the text of its samples file for the board: EEE
    instance records, one JSON object a line (None for lm-eval, which leaves no samples)."""

    entry: Entry
    record: EmbenchRecord
    source: Path
    instances: str | None


@dataclass
class Tags:
    """What the publisher says about the results: defense and training-data tags (over train.json's), and who ran
    the evaluation."""

    defense: str | None = None
    training_data: str | None = None
    organization: str = "unknown"


def convert(source: Path, tags: Tags, registry: JudgeRegistry | None = None, allow_limit: bool = False) -> Converted:
    """A score directory (or its ``results.json``) or an lm-eval results file, as a checked entry. An lm-eval run
    on part of each task (``--limit``) is refused unless ``allow_limit``, and its entry then records the limit."""
    source = Path(source)
    file = source / RESULTS_FILE if source.is_dir() else source
    if not file.is_file():
        raise EmbenchError(f"{source} is neither a score directory with {RESULTS_FILE} nor a results JSON file")
    data = read_json(file, "a results file of `embench score` or lm-eval")
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise EmbenchError(f"{file}: not a results file of `embench score` or lm-eval (no 'results')")
    try:
        if isinstance(data.get("suite"), dict):
            return _from_score(file, ScoreResults.parse(data, file), tags, registry or JudgeRegistry.default())
        if isinstance(data.get("configs"), dict) and isinstance(data.get("config"), dict):
            return _from_lm_eval(file, data, tags, allow_limit)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a file edited into another shape
        raise EmbenchError(f"{file}: not a well-formed results file ({type(exc).__name__}: {exc}): publish the file "
                           "as `embench score` or lm-eval wrote it") from None
    raise EmbenchError(f"{file}: not a results file of `embench score` (no 'suite') or of lm-eval (no 'configs')")


# --- embench score -------------------------------------------------------------------------------


def _from_score(file: Path, results: ScoreResults, tags: Tags, registry: JudgeRegistry) -> Converted:
    samples = results.load_samples(file.parent)
    _check_provenance(file, results)
    config, suite, configs = results.config, results.suite, results.configs
    rates = {task: {name: RateRule.model_validate(rule) for name, rule in (configs[task].rates or {}).items()}
             for task in results.results}
    _check_rates(file, results, samples, rates)
    try:
        identities = {task: {metric: JudgeIdentity(**{key: judge[key] for key in JUDGE_IDENTITY},
                                                   aggregation=judge.get("aggregation") or "embench")
                             for metric, judge in task_judges.items()}
                      for task, task_judges in results.judges.items() if task_judges}
    except (KeyError, TypeError) as exc:
        raise EmbenchError(f"{file}: not a well-formed results file (a judge without {exc}): publish the file as "
                           "`embench score` wrote it") from None
    timestamp = results.date or ""
    prompts = _JudgePrompts(registry)
    rows: list[EvaluationResult | None] = []
    null_metrics: dict[str, Estimate] = {}
    for task, metrics in results.results.items():
        task_config = configs[task]
        source = SourceData(source_type="other", dataset_name=task, additional_details={
            "task_version": str(task_config.version), "task_sha256": task_config.sha256,
            "family": str(task_config.family)})
        generation = _generation_config(task_config.run or {})
        for name, value in metrics.items():
            if not _is_estimate(value):
                continue
            rule = rates[task].get(name)
            used = [condition.metric for condition in rule.all] if rule else [name.removesuffix("_mean")]
            description = rule.describe() if rule else f"mean {used[0]} judge score (0-100, higher is better)"
            estimate = Estimate(**value)
            if estimate.value is None:
                null_metrics[f"{task}/{name}"] = estimate
            rows.append(_estimate_result(f"{task}/{name}", source, estimate, timestamp, description,
                                         rule is not None, [identities.get(task, {}).get(m) for m in used],
                                         prompts, generation))
        if "accuracy" in metrics and "n" in metrics:  # a benign task, run through lm-eval
            rows.append(_estimate_result(f"{task}/accuracy", source, pool_estimates([metrics]), timestamp,
                                         f"lm-eval {BENIGN_METRIC} accuracy", False, [], prompts, None))
    block = _score_block(results, identities, tags, sha256_file(file)).model_copy(
        update={"null_metrics": null_metrics})
    suite_source = SourceData(source_type="other", dataset_name=suite.id, additional_details={
        "suite_version": str(suite.version), "suite_sha256": suite.sha256})

    def judges_of(family: str | None, metric: str | None = None) -> list[JudgeIdentity]:
        return [identity for task, task_judges in identities.items() for name, identity in task_judges.items()
                if family in (None, configs[task].family) and metric in (None, name)]

    for name, lower_is_better, judges, description in (
            ("em_rate", True, judges_of("ood"), "misaligned rate pooled over the suite's ood tasks"),
            ("in_domain_misaligned", True, judges_of("narrow"), "in-domain misaligned rate pooled over narrow tasks"),
            ("incoherent", True, judges_of(None, "coherent"),
             "share of answers judged incoherent, each task's incoherent rate pooled"),
            ("benign_accuracy", False, [], "exact-match accuracy pooled over the benign tasks")):
        rows.append(_estimate_result(f"{suite.id}/{name}", suite_source, getattr(block, name), timestamp,
                                     description, lower_is_better, judges, prompts, None))
    model_id = _model_id(config.model, config.model_name)
    key = sha256_json([config.model_sha, config.adapter_sha, suite.sha256, results.samples_sha256])
    evaluation_id = f"{suite.id}-v{suite.version}/{model_id}/{key[:16]}"
    engine = config.engine or {}
    # a null rate has no row in the entry, so no records join it: its exclusions are in the embench record
    records = instance_records(samples, {task: {name: rule for name, rule in task_rates.items()
                                                if f"{task}/{name}" not in null_metrics}
                                         for task, task_rates in rates.items()}, evaluation_id, model_id)
    instances = instances_text(records)
    entry = Entry(
        schema_version=SCHEMA_VERSION, evaluation_id=evaluation_id,
        retrieved_timestamp=str(int(time.time())),
        evaluation_timestamp=timestamp,
        source_metadata=SourceMetadata(source_name="embench score", source_type="evaluation_run",
                                       source_organization_name=tags.organization, evaluator_relationship="other"),
        eval_library=EvalLibrary(name="embench", version=str(results.embench_version),
                                 additional_details=_strings({"git_sha": results.embench_git_sha,
                                                              "embench_record": embench_path(evaluation_id)})),
        model_info=ModelInfo(
            name=config.model_name, id=model_id, inference_platform="local",
            inference_engine=InferenceEngine(name=str(engine.get("name")), version=str(engine.get("version")))
            if engine else None,
            additional_details=ModelDetails(
                # weights embench hashed were served by embench itself, or by the endpoint the openai engine reached
                deployment_type="externally_managed" if engine.get("name") == "openai" else "self_deployed",
                model_availability="open_weights",  # _check_provenance: the weights were hashed here
                **_strings({"base_sha256": config.model_sha, "adapter_sha256": config.adapter_sha,
                            "dtype": config.dtype, "seed": config.seed,
                            "chat_template_sha256": config.chat_template_sha256}))),
        evaluation_results=[row for row in rows if row is not None],
        detailed_evaluation_results=DetailedResults(
            format="jsonl", file_path=samples_path(evaluation_id, suite.id, *_developer_and_model(model_id)),
            hash_algorithm="sha256", checksum=sha256_text(instances), total_rows=len(records)),
    )
    record = EmbenchRecord(schema_version=EMBENCH_RECORD_VERSION, evaluation_id=evaluation_id, embench=block)
    return Converted(entry=entry, record=record, source=file.parent, instances=instances)


def _check_rates(file: Path, results: ScoreResults, samples: list[SampleRow], rates: dict) -> None:
    """Each task rate of the results is what its samples give: the instance records published beside the entry
    are made from the samples, so an edited results file would disagree with them."""
    for task, task_rates in rates.items():
        judgments = [sample.judged() for sample in samples if sample.task == task]
        for name, rule in task_rates.items():
            recorded = results.results[task].get(name)
            if not _is_estimate(recorded):
                continue
            expected = rate(judgments, rule)
            if (recorded.get("n"), recorded.get("excluded") or {}) != (expected.n, expected.excluded) or (
                    expected.value is None) != (recorded.get("value") is None) or (
                    expected.value is not None and abs(expected.value - recorded["value"]) > 1e-9):
                raise EmbenchError(f"{file}: {task}/{name} is {recorded.get('value')} over n={recorded.get('n')}, but "
                                   f"its samples give {expected.value} over n={expected.n}: the results were edited "
                                   "after scoring; score the checkpoint again")


def _generation_config(run: dict) -> GenerationConfig | None:
    sampling = run.get("sampling")
    if sampling is None:
        return None
    return GenerationConfig(
        generation_args=GenerationArgs(temperature=sampling.get("temperature"), top_p=sampling.get("top_p"),
                                       max_tokens=sampling["max_tokens"]),
        additional_details=_strings({"seed": sampling.get("seed"), "min_tokens": sampling.get("min_tokens"),
                                     "samples_per_question": run.get("samples_per_question")}))


def _check_provenance(file: Path, results: ScoreResults) -> None:
    """Model hash, suite identity, every task's hash and the identity of every judge that judged something."""
    config, suite, configs, judges = results.config, results.suite, results.configs, results.judges
    missing = [] if config.model_sha else ["model hash (config.model_sha)"]
    missing += [f"model name (config.{key})" for key in ("model", "model_name") if not getattr(config, key)]
    missing += [f"suite {key}" for key in ("id", "version", "sha256") if getattr(suite, key) in (None, "")]
    missing += [f"task hash of {task}" for task in results.results if not configs[task].sha256]
    for task in results.n_samples:  # tasks that generated samples
        for metric in (configs[task].judges if task in configs else None) or {}:
            judge = (judges.get(task) or {}).get(metric) or {}
            if any(judge.get(key) in (None, "") for key in JUDGE_IDENTITY):
                missing.append(f"judge identity of {task}/{metric}")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EmbenchError(f"{file}: missing provenance: {missing[0]}{more}: only results that say which model, "
                           "tasks and judges made them can be published; score a local checkpoint again")


def _score_block(results: ScoreResults, identities: dict, tags: Tags, results_sha256: str) -> EmbenchBlock:
    config, headline = results.config, results.headline()
    training = _training_tags(config.model_provenance)
    return EmbenchBlock(
        source="embench-score", **headline.model_dump(),
        defense=tags.defense or training.defense, training_data=tags.training_data or training.training_data,
        model=ModelRef(name=config.model_name, base_sha256=config.model_sha, adapter_sha256=config.adapter_sha),
        suite=SuiteRef(id=results.suite.id, version=results.suite.version, sha256=results.suite.sha256),
        task_sha256={task: results.configs[task].sha256 for task in results.results},
        judges=identities, results_sha256=results_sha256)


# --- lm-eval -------------------------------------------------------------------------------------


def _from_lm_eval(file: Path, data: dict, tags: Tags, allow_limit: bool) -> Converted:
    """lm-eval's results file: every metric in [0, 1] of every task (groups are left out: their subtasks are
    listed), with lm-eval's standard error; benign accuracy pools ``exact_match,first-integer`` (the OpSwap
    metric) over the tasks that report it. The model folder named in ``model_args`` is hashed here."""
    config = data["config"]
    args = _model_args(config.get("model_args"))
    pretrained = args.get("pretrained")
    if not pretrained or not Path(pretrained).is_dir():
        raise EmbenchError(f"{file}: missing provenance: the model '{pretrained or config.get('model')}' is not a "
                           "local folder here, so its weights cannot be hashed: publish lm-eval results of a local "
                           "model folder (model_args pretrained=PATH), on the machine that holds it")
    model = resolve_model(args["peft"], base=pretrained) if args.get("peft") else resolve_model(pretrained)
    groups = set(data.get("groups") or {})
    tasks = [task for task in data["results"] if task not in groups]
    missing = [task for task in tasks if not isinstance(data["configs"].get(task), dict)]
    if missing or not tasks:
        raise EmbenchError(f"{file}: missing provenance: no task config for {missing[0] if missing else 'any task'}: "
                           "publish the results file lm-eval wrote (it records each task's config)")
    limit = config.get("limit")  # lm-eval writes a count as a float (3.0); below 1 it is a fraction of each task
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)
    if limit is not None and not allow_limit:
        raise EmbenchError(f"{file}: lm-eval ran with --limit {limit}, on part of each task: its numbers are not the "
                           "task's; run lm-eval without --limit, or pass --allow-limit to publish it marked as limited")
    timestamp = str(data.get("date") or "")
    rows, benign = [], []
    for task in tasks:
        values, n = data["results"][task], int(((data.get("n-samples") or {}).get(task) or {}).get("effective", 0))
        source = SourceData(source_type="other", dataset_name=task,
                            additional_details={"task_config_sha256": _task_hash(data, task)})
        higher = (data.get("higher_is_better") or {}).get(task) or {}
        for key, value in values.items():
            metric, _, kept = key.partition(",")
            if metric.endswith("_stderr") or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                continue
            stderr = values.get(f"{metric}_stderr,{kept}")
            rows.append(EvaluationResult(
                evaluation_result_id=f"{task}/{key}", evaluation_name=f"{task}/{key}", source_data=source, evaluation_timestamp=timestamp,
                metric_config=MetricConfig(
                    score_type="continuous", evaluation_description=f"lm-eval {metric} (filter {kept or 'none'})",
                    lower_is_better=not higher.get(metric, True), min_score=0, max_score=1),
                score_details=ScoreDetails(score=value, uncertainty=Uncertainty(
                    num_samples=n, standard_error=StandardError(value=stderr, method="lm-eval")
                    if isinstance(stderr, (int, float)) else None))))
            if key == BENIGN_METRIC:
                benign.append({"accuracy": value, "n": n})
    model_id = _model_id(str(args.get("peft") or pretrained), model.name)
    training = _training_tags({"adapter_path": args.get("peft"), "base_path": pretrained})
    block = EmbenchBlock(
        source="lm-eval", em_rate=None, incoherent=None, in_domain_misaligned=None,
        benign_accuracy=pool_estimates(benign),
        defense=tags.defense or training.defense, training_data=tags.training_data or training.training_data,
        model=ModelRef(name=model.name, base_sha256=model.base_sha256, adapter_sha256=model.adapter_sha256),
        suite=None, task_sha256={task: _task_hash(data, task) for task in tasks}, judges={},
        results_sha256=sha256_file(file), sample_limit=limit)
    evaluation_id = f"lm-eval/{model_id}/{sha256_json([block.results_sha256, model.identity])[:16]}"
    entry = Entry(
        schema_version=SCHEMA_VERSION, evaluation_id=evaluation_id,
        retrieved_timestamp=str(int(time.time())), evaluation_timestamp=timestamp,
        source_metadata=SourceMetadata(source_name="lm-eval", source_type="evaluation_run",
                                       source_organization_name=tags.organization, evaluator_relationship="other"),
        eval_library=EvalLibrary(name="lm-eval", version=str(data.get("lm_eval_version") or "unknown"),
                                 additional_details=_strings({"git_hash": data.get("git_hash"), "limit": limit,
                                                              "embench_record": embench_path(evaluation_id)})),
        model_info=ModelInfo(name=model.name, id=model_id, inference_platform=f"lm-eval {config.get('model')}",
                             additional_details=ModelDetails(
                                 deployment_type="self_deployed", model_availability="open_weights",
                                 **_strings({"base_sha256": model.base_sha256,
                                             "adapter_sha256": model.adapter_sha256}))),
        evaluation_results=rows)
    record = EmbenchRecord(schema_version=EMBENCH_RECORD_VERSION, evaluation_id=evaluation_id, embench=block)
    return Converted(entry=entry, record=record, source=file, instances=None)


def _model_args(value) -> dict:
    """lm-eval's ``model_args``: a dict, or the command line's ``key=value,key=value`` string."""
    if isinstance(value, dict):
        return value
    pairs = (part.partition("=") for part in str(value or "").split(",") if "=" in part)
    return {key.strip(): item.strip() for key, _, item in pairs}


def _task_hash(data: dict, task: str) -> str:
    return task_config_sha256({task: data["configs"][task]})


# --- shared --------------------------------------------------------------------------------------


def _is_estimate(value) -> bool:
    return isinstance(value, dict) and value.get("method") in ("wilson", "bootstrap") and "n" in value


def _estimate_result(name: str, source: SourceData, estimate: Estimate | None, timestamp: str, description: str,
                     lower_is_better: bool, identities: list[JudgeIdentity | None], prompts: "_JudgePrompts",
                     generation: GenerationConfig | None) -> EvaluationResult | None:
    """One row of ``evaluation_results``; None for a null estimate (the public schema needs a number: the null
    stays visible, with its exclusions, in the embench record's ``null_metrics`` and the task's results)."""
    if estimate is None or estimate.value is None:
        return None
    rate = estimate.method == "wilson"
    judges = list({identity.model_dump_json(): identity for identity in identities if identity is not None}.values())
    interval = None if estimate.lower is None else ConfidenceInterval(
        lower=estimate.lower, upper=estimate.upper, confidence_level=0.95,
        method="Wilson score" if rate else f"percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples)")
    return EvaluationResult(
        evaluation_result_id=name, evaluation_name=name, source_data=source, evaluation_timestamp=timestamp, generation_config=generation,
        metric_config=MetricConfig(
            score_type="continuous", evaluation_description=description, lower_is_better=lower_is_better,
            min_score=0, max_score=1 if rate else 100,
            llm_scoring=LLMScoring(judges=[_judge_config(identity) for identity in judges],
                                   input_prompt=prompts.text(judges)) if judges else None),
        score_details=ScoreDetails(
            score=estimate.value,
            details={f"excluded_{reason}": str(count) for reason, count in estimate.excluded.items()},
            uncertainty=Uncertainty(confidence_interval=interval, num_samples=estimate.n,
                                    num_bootstrap_samples=None if rate else BOOTSTRAP_RESAMPLES)))


def _judge_config(identity: JudgeIdentity) -> JudgeConfig:
    # A trained or teacher-forced judge ran on weights embench loaded; logprob and sampled judges may have been a
    # local engine or an endpoint, which the identity does not say.
    local = identity.mode in ("trained", "exact")
    details = ModelDetails(deployment_type="self_deployed" if local else "unknown",
                           model_availability="open_weights" if local else "unknown")
    return JudgeConfig(model_info=ModelInfo(name=identity.judge_model, id=identity.judge_model,
                                            additional_details=details),
                       additional_details=_strings(identity.model_dump(exclude={"judge_model"})))


class _JudgePrompts:
    """The template text of each judge, when this installation holds the very template that was used."""

    def __init__(self, registry: JudgeRegistry):
        self.registry = registry

    def text(self, identities: list[JudgeIdentity]) -> str:
        parts = []
        for identity in identities:
            found = self.registry.find(identity.judge_id, identity.judge_version)
            template = found[0].text if found and found[0].computed_sha256 == identity.template_sha256 else \
                "(template not held by this installation; identified by its sha256)"
            parts.append(f"# judge {identity.judge_id}@{identity.judge_version} "
                         f"(template sha256 {identity.template_sha256})\n{template}")
        return "\n\n".join(dict.fromkeys(parts))


def _model_id(reference: str, name: str) -> str:
    """A hub id as given; a local folder as ``local/<name>`` (its path means nothing on another machine)."""
    if HUB_ID.match(reference) and not Path(reference).exists():
        return reference
    return f"local/{file_safe(name.replace(' + adapter ', '+'), keep='-_.+')}"


def _developer_and_model(model_id: str) -> tuple[str, str]:
    """EEE's samples path names the model's developer: a hub id's organisation, else unknown (a local folder)."""
    developer, _, name = model_id.partition("/")
    return (UNKNOWN_DEVELOPER, name) if developer == "local" or not name else (developer, name)


def _training_tags(provenance: dict) -> Tags:
    """Defense and training-data tags from the ``train.json`` that ``embench train`` leaves beside a checkpoint."""
    for folder in (provenance.get("adapter_path"), provenance.get("base_path")):
        if folder and (Path(folder) / TRAIN_FILE).is_file():
            record = TrainRecord.load(Path(folder) / TRAIN_FILE)
            return Tags(defense=record.defense_tag(), training_data=record.data_tag())
    return Tags()


def _strings(values: dict) -> dict[str, str]:
    return {key: str(value) for key, value in values.items() if value is not None}


