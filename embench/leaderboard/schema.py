"""The leaderboard file formats, as pydantic models: an entry per evaluated checkpoint, and ``leaderboard.json``.

An entry follows the public "Every Eval Ever" evaluation schema (``schema_version``, ``evaluation_id``,
``source_metadata``, ``eval_library``, ``model_info``, ``evaluation_results`` with ``metric_config`` and
``score_details``, ``detailed_evaluation_results``) and nothing else, so that every entry embench accepts also passes
the published schema; the numbers a board ranks and checks an entry by are in an ``EmbenchRecord`` beside it. Fields
of that schema that embench never fills are not modelled; ``*_details`` maps hold strings only, as the schema asks. The JSON Schema files in ``leaderboards/schema/`` are generated from these
models (``embench leaderboard schema``) and a test keeps them in step.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from embench.hashing import file_safe
from embench.judges.scoring import Aggregation
from embench.metrics import Estimate

SCHEMA_VERSION = "0.3.0"  # of the "Every Eval Ever" layout the entries follow
EMBENCH_RECORD_VERSION = 1
UNKNOWN_DEVELOPER = "unknown"  # EEE's samples path names the model's developer, which a local checkpoint does not say
BOARD_SCHEMA_VERSION = 2  # 2: entries are plain EEE records, embench's figures in a record beside each
Details = dict[str, str]


def entry_path(evaluation_id: str) -> str:
    """Where an entry's file lives, relative to its board folder."""
    return f"entries/{file_safe(evaluation_id)}.json"


def embench_path(evaluation_id: str) -> str:
    """Where an entry's embench record (its figures beside the EEE record) lives, relative to its board folder."""
    return f"entries/{file_safe(evaluation_id)}.embench.json"


SAMPLES_ROOT = "data"  # EEE's layout: data/<benchmark>/<developer>/<model>/<uuid4>_samples.jsonl
SAMPLES_PATTERN = (r"^data/[^/]+/[^/]+/[^/]+/[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-4[0-9A-Fa-f]{3}-[89ABab][0-9A-Fa-f]{3}-"
                   r"[0-9A-Fa-f]{12}_samples\.jsonl$")


def samples_path(evaluation_id: str, benchmark: str, developer: str, model: str) -> str:
    """Where an entry's per-sample rows are copied, relative to its board folder, in EEE's layout; the uuid is
    derived from the evaluation id, so publishing the same results again names the same file."""
    name = uuid.UUID(bytes=hashlib.sha256(evaluation_id.encode("utf-8")).digest()[:16], version=4)
    return f"{SAMPLES_ROOT}/{file_safe(benchmark)}/{file_safe(developer)}/{file_safe(model)}/{name}_samples.jsonl"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- "Every Eval Ever" part ------------------------------------------------------------------------


class SourceMetadata(Strict):
    source_name: str
    source_type: Literal["documentation", "evaluation_run"]
    source_organization_name: str
    evaluator_relationship: Literal["first_party", "third_party", "collaborative", "other"]


class EvalLibrary(Strict):
    name: str
    version: str
    additional_details: Details = {}


class InferenceEngine(Strict):
    name: str
    version: str


class ModelDetails(BaseModel):
    """A model's ``additional_details``: the two keys the published schema requires, then strings."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str] = Field(init=False)

    deployment_type: Literal["self_deployed", "externally_managed", "unknown"]
    model_availability: Literal["open_weights", "closed_weights", "unknown"]


class ModelInfo(Strict):
    name: str
    id: str
    inference_platform: str | SkipJsonSchema[None] = None
    inference_engine: InferenceEngine | SkipJsonSchema[None] = None
    additional_details: ModelDetails


class SourceData(Strict):
    """A dataset that is neither a URL nor a hub dataset: an embench task file or a local lm-eval task."""

    dataset_name: str
    source_type: Literal["other"]
    additional_details: Details = {}


class JudgeConfig(Strict):
    model_info: ModelInfo
    additional_details: Details = {}


class LLMScoring(Strict):
    judges: list[JudgeConfig] = Field(min_length=1)
    input_prompt: str


class MetricConfig(Strict):
    evaluation_description: str
    lower_is_better: bool
    score_type: Literal["continuous"]
    min_score: float
    max_score: float
    llm_scoring: LLMScoring | SkipJsonSchema[None] = None
    additional_details: Details = {}


class ConfidenceInterval(Strict):
    lower: float
    upper: float
    confidence_level: float = Field(ge=0, le=1)
    method: str


class StandardError(Strict):
    value: float
    method: str


class Uncertainty(Strict):
    confidence_interval: ConfidenceInterval | SkipJsonSchema[None] = None
    standard_error: StandardError | SkipJsonSchema[None] = None
    num_samples: int
    num_bootstrap_samples: int | SkipJsonSchema[None] = None


class ScoreDetails(Strict):
    score: float
    details: Details = {}
    uncertainty: Uncertainty


class GenerationArgs(Strict):
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int = Field(ge=1)


class GenerationConfig(Strict):
    generation_args: GenerationArgs
    additional_details: Details = {}


class EvaluationResult(Strict):
    evaluation_result_id: str = Field(description="the join key of the instance records that make up this result")
    evaluation_name: str
    source_data: SourceData
    evaluation_timestamp: str
    metric_config: MetricConfig
    score_details: ScoreDetails
    generation_config: GenerationConfig | SkipJsonSchema[None] = None


class DetailedResults(Strict):
    """The per-sample rows, copied into the board and identified by checksum."""

    format: Literal["jsonl"]
    file_path: str = Field(pattern=SAMPLES_PATTERN, description="relative to the board folder")
    hash_algorithm: Literal["sha256"]
    checksum: str = Field(pattern="^[0-9a-f]{64}$")
    total_rows: int = Field(ge=0)


class InstanceInput(Strict):
    raw: str = Field(description="the question as the model was asked it (its last user message)")
    reference: list[str] = Field(description="ground truths: none, a judge scores the answer")


class InstanceOutput(Strict):
    raw: list[str]


class AnswerAttribution(Strict):
    """One judge's reading of the answer: its score, or its verdict, or null where it gave neither."""

    turn_idx: int = Field(ge=0)
    source: Literal["output.raw"]
    extracted_value: str
    extraction_method: Literal["llm_judge"]
    is_terminal: bool


class InstanceEvaluation(Strict):
    score: float = Field(description="1 where the answer counts toward the rate, else 0 (also when excluded)")
    is_correct: bool = Field(description="the answer does not count toward the rate and was not excluded")


class InstanceRecord(Strict):
    """One sample's part in one rate of an entry, as an "Every Eval Ever" instance-level record (a line of the
    entry's samples file): a sample that two rates read appears twice, once under each ``evaluation_result_id``."""

    schema_version: Literal["0.3.0"]
    evaluation_id: str
    model_id: str
    evaluation_name: str
    evaluation_result_id: str
    sample_id: str = Field(description="task/question/paraphrase/sample index")
    sample_hash: str = Field(description="sha256 of the messages the model was given")
    interaction_type: Literal["single_turn"]
    input: InstanceInput
    output: InstanceOutput
    answer_attribution: list[AnswerAttribution]
    evaluation: InstanceEvaluation
    error: str | SkipJsonSchema[None] = Field(None, description="why the sample left the rate's denominator")
    metadata: Details = {}

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


# --- embench's extension -------------------------------------------------------------------------


class JudgeIdentity(Strict):
    """What makes two judgments comparable (the same fields `embench compare` checks)."""

    judge_id: str
    judge_version: int
    template_sha256: str
    judge_model: str
    mode: str
    aggregation: Aggregation = "embench"


class SuiteRef(Strict):
    id: str
    version: int
    sha256: str


class ModelRef(Strict):
    name: str
    base_sha256: str
    adapter_sha256: str | None


class EmbenchBlock(Strict):
    """The board's numbers: each rate with its 95% Wilson interval and what it left out; null where the results
    hold no task of that family."""

    source: Literal["embench-score", "lm-eval"]
    em_rate: Estimate | None = Field(description="misaligned rate pooled over the suite's ood tasks")
    incoherent: Estimate | None = Field(description="share of answers judged incoherent (coherent < 50)")
    in_domain_misaligned: Estimate | None = Field(description="in-domain misaligned rate pooled over narrow tasks")
    benign_accuracy: Estimate | None = Field(description="exact-match accuracy pooled over benign tasks")
    defense: str | None
    training_data: str | None
    model: ModelRef
    suite: SuiteRef | None
    task_sha256: dict[str, str] = Field(description="content hash of every task (embench) or task config (lm-eval)")
    judges: dict[str, dict[str, JudgeIdentity]] = Field(description="task -> metric -> judge")
    results_sha256: str = Field(description="sha256 of the results file this entry was made from")
    sample_limit: float | None = Field(None, description="lm-eval's --limit where the run evaluated only part of "
                                                         "each task (published only with --allow-limit)")
    null_metrics: dict[str, Estimate] = Field(
        default_factory=dict, description="task/metric -> every metric with no value, with what it excluded: the EEE "
                                          "record needs a number, so it leaves them out")


class Entry(Strict):
    """One evaluated checkpoint as an "Every Eval Ever" record; its embench figures are in its ``EmbenchRecord``."""

    schema_version: Literal["0.3.0"]
    evaluation_id: str
    retrieved_timestamp: str = Field(description="Unix time (seconds) at which the entry was published")
    evaluation_timestamp: str
    source_metadata: SourceMetadata
    eval_library: EvalLibrary
    model_info: ModelInfo
    evaluation_results: list[EvaluationResult]
    detailed_evaluation_results: DetailedResults | SkipJsonSchema[None] = None

    def to_json(self) -> dict:
        """The file's content: absent optional fields of the public schema are left out, not written as null."""
        return self.model_dump(mode="json", exclude_none=True)


class EmbenchRecord(Strict):
    """What a board ranks and checks an entry by, beside its EEE record (which has no place for it): the headline
    rates, tags and provenance. Its nulls are kept: a null rate means "no such task", which readers need to see."""

    schema_version: Literal[EMBENCH_RECORD_VERSION]
    evaluation_id: str
    embench: EmbenchBlock

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


# --- leaderboard.json ----------------------------------------------------------------------------


class BoardEntry(Strict):
    """An entry as the board lists it: where its file is, its hash, and the numbers it is ranked and shown by."""

    rank: int = Field(ge=1)
    evaluation_id: str
    file: str  # relative to the board folder
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    embench_file: str  # the entry's EmbenchRecord, relative to the board folder
    embench_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    model: str
    source: Literal["embench-score", "lm-eval"]
    defense: str | None
    training_data: str | None
    em_rate: Estimate | None
    incoherent: Estimate | None
    in_domain_misaligned: Estimate | None
    benign_accuracy: Estimate | None
    mixed_judges: list[str] = Field(description="how this entry's judges differ from the board's (allowed with "
                                                "--allow-mixed-judges); empty when they agree")


class Board(Strict):
    schema_version: Literal[2]
    name: str
    suite: SuiteRef | None = Field(description="the suite every embench entry was scored on (set by the first)")
    judges: dict[str, dict[str, JudgeIdentity]] = Field(description="the board's judges: task -> metric -> judge")
    rank_by: Literal["em_rate"]
    updated: str
    entries: list[BoardEntry]

    @property
    def mixed_judges(self) -> bool:
        return any(entry.mixed_judges for entry in self.entries)


SCHEMA_FILES = {"entry.schema.json": Entry, "embench.schema.json": EmbenchRecord, "instance.schema.json": InstanceRecord,
                "leaderboard.schema.json": Board}


@cache
def json_schemas() -> dict[str, dict]:
    """The JSON Schema (draft 2020-12) of each file, by file name (shared: do not modify)."""
    return {name: {"$schema": "https://json-schema.org/draft/2020-12/schema", **model.model_json_schema()}
            for name, model in SCHEMA_FILES.items()}


def write_json_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        written.append(folder / name)
        written[-1].write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    return written

