"""Metrics over judged samples: rates with Wilson intervals, means with bootstrap intervals, null counts.

Nothing is coerced: a sample whose judgment is missing (null score) or carries an excluded verdict leaves the
denominator and is counted; a metric with no usable sample is null, never 0.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence

from pydantic import BaseModel

from embench.tasks import RateRule

Z_95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000


class Estimate(BaseModel):
    """A number with its 95% interval, how many samples it rests on, and what was left out."""

    value: float | None
    lower: float | None
    upper: float | None
    n: int
    method: str
    excluded: dict[str, int] = {}  # why samples were left out of the denominator: null scores, verdicts


def format_estimate(estimate: Estimate | dict | None, percent: bool = True, missing: str = "-") -> str:
    """``12.5% [4.1, 30.2] n=24``, followed by what was left out (``(excluded: 3 REFUSAL)``), so that a rate resting
    on one usable sample of 24 says so; ``null (excluded: 24 null_score)`` when no sample was usable; ``missing``
    where there is no such metric."""
    if estimate is None:
        return missing
    if isinstance(estimate, dict):
        estimate = Estimate.model_validate(estimate)
    excluded = ", ".join(f"{count} {reason}" for reason, count in sorted(estimate.excluded.items()))
    left_out = f"(excluded: {excluded})" if excluded else ""
    if estimate.value is None:
        return f"null {left_out}".strip()
    scale, unit = (100, "%") if percent else (1, "")
    shown = f"{estimate.value * scale:.1f}{unit}"
    if estimate.lower is not None and estimate.upper is not None:
        shown += f" [{estimate.lower * scale:.1f}, {estimate.upper * scale:.1f}]"
    return f"{shown} n={estimate.n} {left_out}".strip()


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float | None, float | None]:
    """The Wilson score interval for a binomial proportion (sound at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return None, None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # The interval always contains p; clamping keeps rounding (1e-16 at 0/n and n/n) from putting it outside.
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def pool_estimates(parts: Sequence[Mapping]) -> Estimate | None:
    """Rates (``value``/``n``) or accuracies (``accuracy``/``n``) pooled: successes and samples added up, with a
    Wilson interval over the pool and the exclusions of every part; None when there is nothing to pool."""
    if not parts:
        return None
    hits = n = 0
    excluded: Counter[str] = Counter()
    for part in parts:
        value = part.get("value", part.get("accuracy"))
        n += part["n"]
        hits += round(value * part["n"]) if part["n"] else 0
        excluded.update(part.get("excluded") or {})
    lower, upper = wilson_interval(hits, n)
    return Estimate(value=hits / n if n else None, lower=lower, upper=upper, n=n, method="wilson",
                    excluded=dict(excluded))


def bootstrap_mean(values: Sequence[float], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> Estimate:
    """The mean with a percentile bootstrap 95% interval (seeded, so results are reproducible)."""
    if not values:
        return Estimate(value=None, lower=None, upper=None, n=0, method="bootstrap")
    mean = sum(values) / len(values)
    generator = random.Random(seed)
    means = sorted(sum(generator.choices(values, k=len(values))) / len(values) for _ in range(resamples))
    lower = means[int(0.025 * (resamples - 1))]
    upper = means[int(math.ceil(0.975 * (resamples - 1)))]
    return Estimate(value=mean, lower=lower, upper=upper, n=len(values), method="bootstrap")


# A sample's judgments: metric name -> {"score": float | None, "verdict": str | None, "status": ...}
SampleJudgments = Mapping[str, Mapping]


def sample_outcome(judgments: SampleJudgments, rule: RateRule) -> bool | str:
    """Whether one sample counts toward ``rule`` (every condition holds), or why it leaves the denominator:
    ``verdict:<WORD>`` for an excluded verdict, ``null_score`` where a metric the rule names has no score."""
    verdicts = {judgments.get(condition.metric, {}).get("verdict") for condition in rule.all} - {None}
    if verdicts & set(rule.exclude_verdicts):
        return f"verdict:{sorted(verdicts & set(rule.exclude_verdicts))[0]}"
    scores = [judgments.get(condition.metric, {}).get("score") for condition in rule.all]
    if any(score is None for score in scores):
        return "null_score"
    return all(condition.holds(score) for condition, score in zip(rule.all, scores))


def rate(samples: Sequence[SampleJudgments], rule: RateRule) -> Estimate:
    """The share of usable samples where every condition of ``rule`` holds, with its Wilson interval."""
    excluded: Counter[str] = Counter()
    hits = n = 0
    for judgments in samples:
        outcome = sample_outcome(judgments, rule)
        if isinstance(outcome, str):
            excluded[outcome] += 1
            continue
        n += 1
        hits += outcome
    lower, upper = wilson_interval(hits, n)
    return Estimate(value=hits / n if n else None, lower=lower, upper=upper, n=n, method="wilson",
                    excluded=dict(excluded))


def mean_score(samples: Sequence[SampleJudgments], metric: str, seed: int = 0) -> Estimate:
    """The mean judge score for ``metric`` over samples that have one and no verdict; the rest are counted by reason.
    A sample with a verdict is left out even beside a score (embench's aggregation records both), as a rate leaves
    out the samples with a verdict its rule excludes: the judge said the answer is not one it scores."""
    excluded: Counter[str] = Counter()
    values = []
    for judgments in samples:
        judgment = judgments.get(metric, {})
        if judgment.get("verdict"):
            excluded[f"verdict:{judgment['verdict']}"] += 1
        elif judgment.get("score") is None:
            excluded["null_score"] += 1
        else:
            values.append(float(judgment["score"]))
    estimate = bootstrap_mean(values, seed=seed)
    return estimate.model_copy(update={"excluded": dict(excluded)})


def verdict_counts(samples: Sequence[SampleJudgments], metric: str) -> dict[str, int]:
    return dict(Counter(j[metric]["verdict"] for j in samples if j.get(metric, {}).get("verdict")))


# --- statistics of paired numbers (judges against labels, detectors against EM labels) ------------------------


def auroc(positive: Sequence[float | None], negative: Sequence[float | None]) -> float | None:
    """P(positive score > negative score), ties 0.5 (Mann-Whitney U / (n_pos n_neg)); None without both classes."""
    pos = [value for value in positive if value is not None]
    neg = [value for value in negative if value is not None]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the average of the ranks they span."""
    order = sorted(range(len(values)), key=lambda index: values[index])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(xs: Sequence[float | None], ys: Sequence[float | None]) -> float | None:
    """Pearson correlation of average ranks over pairs where both are present; None with < 2 pairs or no variance."""
    if len(xs) != len(ys):
        raise ValueError("spearman needs two sequences of equal length")
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    if len(pairs) < 2:
        return None
    rx = average_ranks([x for x, _ in pairs])
    ry = average_ranks([y for _, y in pairs])
    mean_x, mean_y = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mean_x) * (b - mean_y) for a, b in zip(rx, ry))
    var_x = sum((a - mean_x) ** 2 for a in rx)
    var_y = sum((b - mean_y) ** 2 for b in ry)
    if var_x == 0 or var_y == 0:
        return None
    return cov / math.sqrt(var_x * var_y)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
