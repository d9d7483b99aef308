"""``embench compare``: per-metric differences between two scores (``results.json``), with 95% intervals.

For every (task, metric) that both results hold as an estimate of the same kind (``wilson`` rates, ``bootstrap``
means), the row gives A, B, the difference ``B - A`` and a 95% interval for it, built from the two published
95% intervals by the method of variance estimates recovery (MOVER, Zou & Donner 2008)::

    lower = d - sqrt((b - lower_B)^2 + (upper_A - a)^2)
    upper = d + sqrt((upper_B - b)^2 + (a - lower_A)^2)

- rates: with Wilson intervals this is exactly Newcombe's hybrid score interval (Newcombe 1998, method 10);
- means: a normal approximation from the two bootstrap intervals: for symmetric intervals it is
  ``d +/- sqrt(h_A^2 + h_B^2)`` with ``h`` the half-widths; an asymmetric bootstrap interval contributes the
  half-width on the side that matters.

Both treat A and B as independent samples. Two models answering the same questions are usually positively
correlated, so the interval is then conservative (too wide), never too narrow. A difference is null when either
value is null (no usable sample), and its interval null when either interval is.

Results are comparable only from the same suite (id and version), the same task versions and the same judges
(id, version, template hash, judge model and mode); anything else is refused unless mixed judges are allowed.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel

from embench.errors import EmbenchError
from embench.judges.spec import compared_identity
from embench.results import ScoreResults

COMPARED_METHODS = ("wilson", "bootstrap")
INTERVAL_METHOD = ("MOVER (Zou & Donner 2008) from the two 95% intervals: Newcombe's hybrid score interval for "
                   "Wilson rates, a normal approximation for bootstrap means; A and B treated as independent")


class Row(BaseModel):
    """One metric in both results: the two estimates and their difference B - A with its 95% interval."""

    task: str
    metric: str
    method: str
    a: float | None
    a_lower: float | None
    a_upper: float | None
    n_a: int
    b: float | None
    b_lower: float | None
    b_upper: float | None
    n_b: int
    difference: float | None
    lower: float | None
    upper: float | None


def difference_interval(a: float, a_lower: float, a_upper: float, b: float, b_lower: float,
                        b_upper: float) -> tuple[float, float]:
    """The MOVER 95% interval for ``b - a`` from each side's 95% interval (Newcombe's for Wilson intervals)."""
    difference = b - a
    return (difference - math.sqrt((b - b_lower) ** 2 + (a_upper - a) ** 2),
            difference + math.sqrt((b_upper - b) ** 2 + (a - a_lower) ** 2))


def check_comparable(a: ScoreResults, b: ScoreResults, allow_mixed_judges: bool = False) -> list[str]:
    """Refuse results of different suites or task versions, and (unless allowed) of different judges.

    Returns the judge differences that were allowed, one line each (empty when the judges agree).
    """
    suite_a, suite_b = a.suite, b.suite
    if (suite_a.id, suite_a.version) != (suite_b.id, suite_b.version):
        raise EmbenchError(f"different suites: A is {suite_a.id} v{suite_a.version}, B is "
                           f"{suite_b.id} v{suite_b.version}: compare scores of the same suite version")
    versions_a, versions_b = a.versions, b.versions
    changed = sorted(task for task in set(versions_a) & set(versions_b) if versions_a[task] != versions_b[task])
    if changed:
        raise EmbenchError("different task versions: " + ", ".join(
            f"{task} v{versions_a[task]} vs v{versions_b[task]}" for task in changed))
    differences = []
    judges_a, judges_b = a.judges, b.judges
    for task in [task for task in a.results if task in b.results]:
        metrics_a, metrics_b = judges_a.get(task) or {}, judges_b.get(task) or {}
        for metric in sorted(set(metrics_a) | set(metrics_b)):
            identity_a = _identity(metrics_a.get(metric))
            identity_b = _identity(metrics_b.get(metric))
            if identity_a != identity_b:
                differences.append(f"{task}/{metric}: A {_describe(identity_a)} vs B {_describe(identity_b)}")
    if differences and not allow_mixed_judges:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise EmbenchError(f"different judges: {differences[0]}{more}: compare scores judged alike, or pass "
                           "--allow-mixed-judges")
    return differences


def _identity(judge: dict | None) -> tuple | None:
    return None if judge is None else compared_identity(judge)


def _describe(identity: tuple | None) -> str:
    if identity is None:
        return "no judge"
    judge_id, version, sha, model, mode, aggregation = identity
    return f"{judge_id}@{version} (template {str(sha)[:12]}, {model}, {mode}, {aggregation} aggregation)"


def compare_results(a: ScoreResults, b: ScoreResults, allow_mixed_judges: bool = False) -> list[Row]:
    """One row per (task, metric) both results hold as the same kind of estimate, in A's order."""
    check_comparable(a, b, allow_mixed_judges)
    rows = []
    for task, metrics_a in a.results.items():
        metrics_b = b.results.get(task)
        if not isinstance(metrics_a, dict) or not isinstance(metrics_b, dict):
            continue
        for metric, estimate_a in metrics_a.items():
            estimate_b = metrics_b.get(metric)
            if not (_is_estimate(estimate_a) and _is_estimate(estimate_b)) \
                    or estimate_a["method"] != estimate_b["method"]:
                continue
            rows.append(_row(task, metric, estimate_a, estimate_b))
    return rows


def _is_estimate(value) -> bool:
    return isinstance(value, dict) and value.get("method") in COMPARED_METHODS


def _row(task: str, metric: str, a: dict, b: dict) -> Row:
    difference = lower = upper = None
    if a.get("value") is not None and b.get("value") is not None:
        difference = b["value"] - a["value"]
        bounds = (a.get("lower"), a.get("upper"), b.get("lower"), b.get("upper"))
        if all(bound is not None for bound in bounds):
            lower, upper = difference_interval(a["value"], a["lower"], a["upper"], b["value"], b["lower"],
                                               b["upper"])
    return Row(task=task, metric=metric, method=a["method"], a=a.get("value"), a_lower=a.get("lower"),
               a_upper=a.get("upper"), n_a=a.get("n", 0), b=b.get("value"), b_lower=b.get("lower"),
               b_upper=b.get("upper"), n_b=b.get("n", 0), difference=difference, lower=lower, upper=upper)


def comparison_json(path_a: Path, path_b: Path, a: ScoreResults, rows: list[Row],
                    judge_differences: list[str]) -> dict:
    return {"a": str(path_a), "b": str(path_b), "suite": {"id": a.suite.id, "version": a.suite.version},
            "difference": "B - A", "interval": INTERVAL_METHOD, "mixed_judges": judge_differences,
            "rows": [row.model_dump() for row in rows]}
