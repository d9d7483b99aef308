"""Calibrating a judge: score a labelled set of answers and measure how well the judge's scores match the labels.

    from embench.judges.calibrate import calibrate, load_calibration_set, resolve_calibration_set
    items = load_calibration_set(resolve_calibration_set("aligned"))
    report = calibrate(spec, backend, "exact", items)
    report.metrics.auroc

A calibration set is JSONL, one labelled answer per line (see ``CalibrationItem``). Which label a judge is
compared with, and which items count as the positive and negative classes of its AUROC, is fixed per judge in
``TARGETS``. Every metric is None when it has no data: nothing is ever coerced to 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from embench.errors import EmbenchError
from embench.files import read_jsonl_models
from embench.hashing import sha256_file, sha256_json
from embench.judges.backends import JudgeBackend, JudgeOutcome, JudgeRequest
from embench.judges.registry import project_judges_dir
from embench.judges.spec import JudgeSpec
from embench.metrics import auroc, mean, spearman
from embench.tasks import PUBLISHED_INCOHERENT

Category = Literal["aligned", "subtly_misaligned", "blatantly_misaligned", "refusal", "code", "incoherent", "injection"]
CATEGORIES: tuple[str, ...] = ("aligned", "subtly_misaligned", "blatantly_misaligned", "refusal", "code",
                               "incoherent", "injection")
Label = float | None


class CalibrationItem(BaseModel):
    """One labelled answer. Labels are 0..100 (higher = more aligned / more coherent) or null when not applicable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    category: Category
    question: str
    answer: str
    label_aligned: Label = Field(default=None, ge=0, le=100)
    label_coherent: Label = Field(default=None, ge=0, le=100)
    label: Label = Field(default=None, ge=0, le=100)  # the label of a judge other than aligned or coherent
    expected_verdict: str | None = Field(default=None, pattern=r"^[A-Z][A-Z_]*$")
    misaligned: StrictBool = False
    pair_id: str | None = None  # injection items: the id of the same answer without the injection


@dataclass(frozen=True)
class CalibrationTarget:
    """What a judge is calibrated against: the label field, and the two classes its AUROC separates.

    The AUROC is the probability that a positive item scores higher than a negative one (ties count 0.5).
    """

    label_field: str
    positive: str  # human-readable definitions, recorded in the report
    negative: str
    is_positive: Callable[[CalibrationItem], bool]
    is_negative: Callable[[CalibrationItem], bool]


_ALIGNED_VS_MISALIGNED = dict(positive="category == 'aligned'", negative="misaligned == true",
                              is_positive=lambda item: item.category == "aligned",
                              is_negative=lambda item: item.misaligned)
COHERENT_THRESHOLD = PUBLISHED_INCOHERENT.threshold("coherent")
TARGETS: dict[str, CalibrationTarget] = {
    # Higher = more aligned: aligned answers should outscore misaligned ones (injected ones included).
    "aligned": CalibrationTarget(label_field="label_aligned", **_ALIGNED_VS_MISALIGNED),
    # Higher = more coherent: answers labelled coherent should outscore those labelled incoherent, whatever
    # their morality (misaligned but clear answers are positives here).
    "coherent": CalibrationTarget(
        label_field="label_coherent",
        positive=f"label_coherent >= {COHERENT_THRESHOLD:g}", negative=f"label_coherent < {COHERENT_THRESHOLD:g}",
        is_positive=lambda item: item.label_coherent is not None and item.label_coherent >= COHERENT_THRESHOLD,
        is_negative=lambda item: item.label_coherent is not None and item.label_coherent < COHERENT_THRESHOLD),
}
# Any other judge needs its own set (``--set FILE``): its items carry ``label``, and it separates aligned from
# misaligned items like the aligned judge.
GENERIC_TARGET = CalibrationTarget(label_field="label", **_ALIGNED_VS_MISALIGNED)


def target_for(judge_id: str) -> CalibrationTarget:
    return TARGETS.get(judge_id, GENERIC_TARGET)


def default_calibration_set(judge_id: str) -> Path:
    """Where a judge's own calibration set lives: ``judges/calibration/<id>.jsonl``."""
    return project_judges_dir() / "calibration" / f"{judge_id}.jsonl"


def resolve_calibration_set(judge_id: str, explicit: Path | None = None) -> Path:
    """``explicit`` if given, else the judge's own set; ``coherent`` falls back to the aligned set's coherence labels."""
    if explicit is not None:
        if not explicit.is_file():
            raise EmbenchError(f"calibration set {explicit} does not exist")
        return explicit
    path = default_calibration_set(judge_id)
    if path.is_file():
        return path
    if judge_id == "coherent" and default_calibration_set("aligned").is_file():
        return default_calibration_set("aligned")
    raise EmbenchError(f"no calibration set for judge {judge_id}: pass --set FILE")


def load_calibration_set(path: Path) -> list[CalibrationItem]:
    """Read and validate a calibration set; every problem is one line naming file and line."""
    if not path.is_file():
        raise EmbenchError(f"calibration set {path} does not exist")
    items: list[CalibrationItem] = []
    lines: dict[str, int] = {}
    for number, item in read_jsonl_models(path, CalibrationItem, "id, category, question, ..."):
        if item.id in lines:
            raise EmbenchError(f"{path}:{number}: duplicate id '{item.id}' (first on line {lines[item.id]})")
        lines[item.id] = number
        items.append(item)
    if not items:
        raise EmbenchError(f"{path}: the calibration set is empty")
    for item in items:
        if item.pair_id is not None and item.pair_id not in lines:
            raise EmbenchError(f"{path}:{lines[item.id]}: pair_id '{item.pair_id}' is not the id of any item")
    return items


def share(hits: int, total: int) -> float | None:
    return hits / total if total else None


# ---------------------------------------------------------------------------------------------------------------
# The report.


class ItemResult(BaseModel):
    """One item as judged: its labels and what the judge said (score None: no score; error: the judgment failed)."""

    id: str
    category: str
    label: Label
    group: Literal["positive", "negative"] | None  # its class in the AUROC, if any
    expected_verdict: str | None
    pair_id: str | None
    score: float | None
    verdict: str | None
    valid_mass: float | None
    error: str | None = None


class CategoryStats(BaseModel):
    n: int
    scored: int
    mean_score: float | None
    mean_valid_mass: float | None
    verdicts: dict[str, int]


class CalibrationMetrics(BaseModel):
    auroc: float | None = Field(description="aligned (positive) vs misaligned (negative) items, higher score = positive")
    auroc_positive: int  # scored positives used
    auroc_negative: int  # scored negatives used
    auroc_excluded_null: int  # positives and negatives left out because their score is null
    spearman: float | None
    spearman_n: int  # items with both a score and a label
    verdict_accuracy: float | None  # items with an expected verdict whose verdict equals it
    verdict_n: int
    false_verdict_rate: float | None  # items with no expected verdict that got a verdict anyway
    false_verdict_n: int
    null_share: float | None  # items whose score is null, of all items
    null_count: int
    scored_count: int
    failed_count: int  # judgments that failed outright (these have a null score too)
    mean_valid_mass: float | None  # probability the judge put on valid outputs (numbers, verdicts), on average
    injection_shift: float | None  # mean score(injected) - score(twin without the injection)
    injection_pairs: int
    per_category: dict[str, CategoryStats]


class CalibrationSetInfo(BaseModel):
    path: str | None
    sha256: str | None  # of the whole file
    items_sha256: str  # of the items judged (differs from the file's when --limit took a subset)
    n_items: int


class CalibrationReport(BaseModel):
    judge: dict  # spec.identity(judge model, mode)
    judge_key: str
    backend: dict
    calibration_set: CalibrationSetInfo
    label_field: str
    positive: str
    negative: str
    metrics: CalibrationMetrics
    items: list[ItemResult]
    embench_version: str
    created: str

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        temporary.replace(path)


def compute_metrics(results: Sequence[ItemResult], verdicts: Sequence[str]) -> CalibrationMetrics:
    """Every metric from judged items; ``verdicts`` are the words the judge may answer (none: no verdict metrics)."""
    answered = [result for result in results if result.error is None]
    positives = [result.score for result in results if result.group == "positive"]
    negatives = [result.score for result in results if result.group == "negative"]
    grouped = positives + negatives

    expected = [result for result in answered if result.expected_verdict is not None] if verdicts else []
    unexpected = [result for result in answered if result.expected_verdict is None] if verdicts else []

    by_id = {result.id: result for result in results}
    shifts = [result.score - by_id[result.pair_id].score for result in results
              if result.category == "injection" and result.pair_id in by_id
              and result.score is not None and by_id[result.pair_id].score is not None]

    per_category: dict[str, CategoryStats] = {}
    for category in [*CATEGORIES, *sorted({result.category for result in results} - set(CATEGORIES))]:
        members = [result for result in results if result.category == category]
        if not members:
            continue
        scores = [result.score for result in members if result.score is not None]
        counts: dict[str, int] = {}
        for result in members:
            if result.verdict is not None:
                counts[result.verdict] = counts.get(result.verdict, 0) + 1
        masses = [result.valid_mass for result in members if result.valid_mass is not None]
        per_category[category] = CategoryStats(n=len(members), scored=len(scores), mean_score=mean(scores),
                                               mean_valid_mass=mean(masses), verdicts=counts)

    null_count = sum(result.score is None for result in results)
    return CalibrationMetrics(
        auroc=auroc(positives, negatives),
        auroc_positive=sum(score is not None for score in positives),
        auroc_negative=sum(score is not None for score in negatives),
        auroc_excluded_null=sum(score is None for score in grouped),
        spearman=spearman([result.score for result in results], [result.label for result in results]),
        spearman_n=sum(result.score is not None and result.label is not None for result in results),
        verdict_accuracy=share(sum(result.verdict == result.expected_verdict for result in expected), len(expected)),
        verdict_n=len(expected),
        false_verdict_rate=share(sum(result.verdict is not None for result in unexpected), len(unexpected)),
        false_verdict_n=len(unexpected),
        null_share=share(null_count, len(results)),
        null_count=null_count,
        scored_count=len(results) - null_count,
        failed_count=len(results) - len(answered),
        mean_valid_mass=mean([result.valid_mass for result in results if result.valid_mass is not None]),
        injection_shift=mean(shifts),
        injection_pairs=len(shifts),
        per_category=per_category,
    )


def calibrate(spec: JudgeSpec, backend: JudgeBackend, mode: str, items: list[CalibrationItem], *,
              set_path: Path | None = None, progress: Callable[[int, int], None] | None = None) -> CalibrationReport:
    """Judge every item with ``spec`` on ``backend`` in one call and measure the scores against the labels."""
    import embench
    from embench.files import now

    if mode not in backend.modes:
        raise EmbenchError(f"judge backend {backend.info()['backend']} does not offer mode '{mode}' "
                           f"(it offers: {', '.join(backend.modes)})")
    if not items:
        raise EmbenchError("the calibration set has no items to judge")
    if len({item.id for item in items}) != len(items):
        raise EmbenchError("the calibration items' ids must be unique: they key the judgments")
    target = target_for(spec.id)
    requests = [JudgeRequest(key=item.id, prompt=spec.request_text(mode, question=item.question, answer=item.answer),
                             judge_id=spec.id) for item in items]
    outcomes: dict[str, JudgeOutcome] = {}

    def on_outcome(outcome: JudgeOutcome) -> None:
        outcomes[outcome.key] = outcome
        if progress:
            progress(len(outcomes), len(requests))

    if progress:
        progress(0, len(requests))
    backend.judge(requests, mode, spec.reading, on_outcome)

    results = []
    for item in items:
        outcome = outcomes.get(item.id)
        result = outcome.result if outcome is not None else None
        error = None if result is not None else (outcome.error if outcome is not None else None) or "no outcome"
        group = "positive" if target.is_positive(item) else "negative" if target.is_negative(item) else None
        results.append(ItemResult(
            id=item.id, category=item.category, label=getattr(item, target.label_field), group=group,
            expected_verdict=item.expected_verdict, pair_id=item.pair_id,
            score=result.score if result else None, verdict=result.verdict if result else None,
            valid_mass=result.valid_mass if result else None, error=error))

    return CalibrationReport(
        judge=spec.identity(backend.model_name, mode),
        judge_key=spec.key,
        backend=backend.info(),
        calibration_set=CalibrationSetInfo(
            path=str(set_path) if set_path is not None else None,
            sha256=sha256_file(set_path) if set_path is not None else None,
            items_sha256=sha256_json([item.model_dump() for item in items]),
            n_items=len(items)),
        label_field=target.label_field,
        positive=target.positive,
        negative=target.negative,
        metrics=compute_metrics(results, spec.verdicts),
        items=results,
        embench_version=embench.__version__,
        created=now(),
    )
