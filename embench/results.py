"""``results.json`` of `embench score`, typed: the one model every reader loads (compare, the leaderboard, the
monitor's labels, reproduce's comparison, the CLI) instead of poking at raw keys, and the headline rates defined
once.

The headline rates, pooled (successes and samples added up, one Wilson interval over the pool) from each task's
own rate, whose rule (thresholds included) is the task's data:

- ``em_rate``: the ``misaligned`` rate over the suite's ood tasks;
- ``in_domain_misaligned``: the ``in_domain_misaligned`` rate over its narrow tasks;
- ``incoherent``: the ``incoherent`` rate over every task that has one;
- ``benign_accuracy``: lm-eval accuracy over its benign tasks.

Files written before this model existed load unchanged (they have no ``format_version``; it is 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from embench.errors import EmbenchError
from embench.files import jsonl_lines, parse_json, read_json, validated, write_json_atomic
from embench.hashing import sha256_bytes
from embench.layout import RESULTS_FILE, SAMPLES_FILE, results_file
from embench.metrics import Estimate, pool_estimates

FORMAT_VERSION = 1
EM_RATE, IN_DOMAIN_RATE, INCOHERENT_RATE = "misaligned", "in_domain_misaligned", "incoherent"
OOD, NARROW, BENIGN = "ood", "narrow", "benign"


class RunConfig(BaseModel):
    """What was scored and how it was generated (``config`` of results.json)."""

    model_config = ConfigDict(extra="allow")

    model: str
    model_name: str
    model_sha: str | None = None
    adapter_sha: str | None = None
    model_provenance: dict[str, Any] = {}
    engine: dict[str, Any] | None = None
    dtype: str | None = None
    chat_template_sha256: str | None = None
    seed: int | None = None


class SuiteRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    version: int | str
    sha256: str | None = None
    tasks: list[str] = []
    overrides: dict[str, Any] = {}


class TaskRecord(BaseModel):
    """One task's definition as scored (``configs[task]``): its YAML fields, hash and run settings."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    version: int | str | None = None
    family: str | None = None
    sha256: str | None = None
    rates: dict[str, Any] | None = None
    judges: dict[str, Any] | None = None
    run: dict[str, Any] | None = None


class SampleRow(BaseModel):
    """A line of a score directory's ``samples.jsonl``: one generation with, per metric, its judgment (None where
    its judge made none)."""

    task: str
    key: str
    prompt_id: str
    sample_index: int
    messages: list[dict[str, str]]
    completion: str
    finish_reason: str | None = None
    metadata: dict[str, Any] = {}
    judgments: dict[str, dict[str, Any] | None]

    def judged(self) -> dict[str, dict[str, Any]]:
        """The judgments the rate and mean rules read: metric -> judgment, for the metrics that have one."""
        return {metric: judgment for metric, judgment in self.judgments.items() if judgment}


class Headline(BaseModel):
    em_rate: Estimate | None
    in_domain_misaligned: Estimate | None
    incoherent: Estimate | None
    benign_accuracy: Estimate | None


class ScoreResults(BaseModel):
    """A ``results.json``. ``results[task][metric]`` holds an estimate (as a dict), verdict counts, or a benign
    task's lm-eval figures; ``judges[task][metric]`` the identity and backend of the judge that judged it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    format_version: int = FORMAT_VERSION
    results: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]] = {}
    per_question: dict[str, dict[str, Any]] = {}
    configs: dict[str, TaskRecord]
    versions: dict[str, Any] = {}
    n_samples: dict[str, dict[str, int]] = Field(default={}, alias="n-samples")
    config: RunConfig
    judges: dict[str, dict[str, dict[str, Any]]] = {}
    suite: SuiteRecord
    date: str | None = None
    embench_version: str | None = None
    embench_git_sha: str | None = None
    samples_sha256: str | None = None

    @classmethod
    def load(cls, path: Path) -> "ScoreResults":
        """A ``results.json`` or the score directory holding one; anything else is one line naming the file."""
        file = results_file(path)
        if not file.is_file():
            raise EmbenchError(f"{path} is neither a score directory with {RESULTS_FILE} nor a {RESULTS_FILE} file")
        return cls.parse(read_json(file, f"a {RESULTS_FILE} written by `embench score`"), file)

    @classmethod
    def parse(cls, data, file: Path) -> "ScoreResults":
        """The parsed JSON of ``file`` checked and typed."""
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict) \
                or not isinstance(data.get("suite"), dict):
            raise EmbenchError(f"{file}: not a {RESULTS_FILE} written by `embench score` (no 'results' and 'suite')")
        results = validated(cls, data, f"{file}: not a well-formed results file (pass the file `embench score` wrote)")
        missing = sorted(set(results.results) - set(results.configs))
        if missing:
            raise EmbenchError(f"{file}: not a well-formed results file: task '{missing[0]}' has results but no "
                               "config (pass the file `embench score` wrote)")
        return results

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    def load_samples(self, score_dir: Path) -> list[SampleRow]:
        """The ``samples.jsonl`` beside these results, checked against the ``samples_sha256`` they record."""
        file = Path(score_dir) / SAMPLES_FILE
        if not self.samples_sha256:
            raise EmbenchError(f"{score_dir / RESULTS_FILE}: missing provenance: no samples_sha256: score the "
                               "checkpoint again")
        if not file.is_file():
            raise EmbenchError(f"{file} is missing: {RESULTS_FILE} refers to it by checksum; score the checkpoint "
                               "again")
        data = file.read_bytes()
        if sha256_bytes(data) != self.samples_sha256:
            raise EmbenchError(f"{file} does not match the samples_sha256 recorded in {RESULTS_FILE}: the samples "
                               "changed after scoring; score the checkpoint again")
        return [validated(SampleRow, parse_json(line, f"{file}:{number}", "a sample row"), f"{file}:{number}",
                          whole="(line)")
                for number, line in enumerate(jsonl_lines(data.decode("utf-8")), start=1) if line.strip()]

    def to_json(self) -> dict:
        """The file's keys as written (fields a file left out stay out), stamped with the format version."""
        return {"format_version": self.format_version,
                **self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"format_version"})}

    def tasks_of(self, family: str | None) -> list[str]:
        """The tasks of a family (every task for None), in the results' order."""
        return [task for task in self.results if family is None or self.configs[task].family == family]

    def parts(self, rate: str, tasks: list[str]) -> list[dict]:
        """The estimates of a task rate that these tasks report (a task without it is left out)."""
        return [self.results[task][rate] for task in tasks
                if task in self.results and isinstance(self.results[task].get(rate), dict)]

    def pooled(self, rate: str, family: str | None = None) -> Estimate | None:
        """A task rate pooled over the tasks of a family that report it (None when none does)."""
        return pool_estimates(self.parts(rate, self.tasks_of(family)))

    def headline(self) -> Headline:
        return Headline(
            em_rate=self.pooled(EM_RATE, OOD),
            in_domain_misaligned=self.pooled(IN_DOMAIN_RATE, NARROW),
            incoherent=self.pooled(INCOHERENT_RATE),
            benign_accuracy=pool_estimates([self.results[task] for task in self.tasks_of(BENIGN)
                                            if "accuracy" in self.results[task] and "n" in self.results[task]]))


class TrainData(BaseModel):
    model_config = ConfigDict(extra="allow")

    source: str | None = None
    sha256: str | None = None
    conversations: int | None = None
    training_examples: int | None = None


class TrainRecord(BaseModel):
    """``train.json`` of a training folder (and of each checkpoint in it), as `embench train` writes it
    (``defenses``: a list of {name, args}; ``data``: {source, sha256, ...}). A record written by hand for another
    trainer's adapter may name them otherwise: ``defense``, strings, or objects with a name, source, id, tag or
    path."""

    model_config = ConfigDict(extra="allow")

    fingerprint: str | None = None
    status: str | None = None
    step: int | None = None
    total_steps: int | None = None
    config: dict[str, Any] = {}
    data: TrainData | str | None = None
    defenses: list[dict[str, Any] | str] = []
    defense: dict[str, Any] | str | None = None
    created: str | None = None
    updated: str | None = None

    @classmethod
    def load(cls, path: Path) -> "TrainRecord":
        data = read_json(path, "a train.json written by `embench train`")
        if not isinstance(data, dict):
            raise EmbenchError(f"{path}: expected a JSON object: this file is not a train.json of `embench train`")
        return validated(cls, data, f"{path}: not a train.json of `embench train`")

    def defense_tag(self) -> str | None:
        return _tag(self.defense) or "+".join(name for name in map(_tag, self.defenses) if name) or None

    def data_tag(self) -> str | None:
        return _tag(self.data.model_dump() if isinstance(self.data, TrainData) else self.data)


def _tag(value: dict | str | None) -> str | None:
    """A tag: a string as it is, an object by its name (or source, id, tag, path); a path by its file name (a
    folder on the trainer's machine means nothing elsewhere)."""
    if isinstance(value, dict):
        value = next((value[key] for key in ("name", "source", "id", "tag", "path") if value.get(key)), None)
    if value in (None, ""):
        return None
    return Path(str(value)).name if "/" in str(value) else str(value)
