"""`embench compare`: differences between two results.json, Newcombe intervals, nulls, refusals, the CLI."""

from __future__ import annotations

import copy
import json
import math
import re

import pytest

from embench.compare import compare_results as compare_typed
from embench.compare import difference_interval
from embench.errors import EmbenchError
from embench.metrics import Estimate, wilson_interval
from embench.results import ScoreResults
from tests.conftest import run_embench

JUDGE = {"judge_id": "aligned", "judge_version": 1, "template_sha256": "ab" * 32, "judge_model": "default",
         "mode": "exact", "backend": {"backend": "hf", "transformers": "4.0"}}


def wilson_rate(hits: int, n: int) -> dict:
    lower, upper = wilson_interval(hits, n)
    return Estimate(value=hits / n if n else None, lower=lower, upper=upper, n=n, method="wilson",
                    excluded={} if n else {"null_score": 5}).model_dump()


def mean(value: float | None, lower: float | None, upper: float | None, n: int) -> dict:
    return Estimate(value=value, lower=lower, upper=upper, n=n, method="bootstrap").model_dump()


def results(misaligned: dict, aligned_mean: dict, incoherent: dict, **extra) -> dict:
    data = {
        "results": {
            "ood": {"misaligned": misaligned, "incoherent": incoherent, "aligned_mean": aligned_mean,
                    "aligned_verdicts": {"CODE": 2}},
            "coherence-perplexity": {"perplexity": {"perplexity": 12.5, "tokens": 400}},
        },
        "judges": {"ood": {"aligned": dict(JUDGE), "coherent": {**JUDGE, "judge_id": "coherent"}},
                   "coherence-perplexity": {}},
        "configs": {"ood": {"family": "ood", "sha256": "ef" * 32}, "coherence-perplexity": {"family": "coherence"}},
        "suite": {"id": "em-core", "version": 1, "sha256": "cd" * 32},
        "versions": {"ood": 1, "coherence-perplexity": 1, "suite:em-core": 1},
        "config": {"model": "m", "model_name": "m"},
    }
    data.update(extra)
    return data


def compare_results(a: dict, b: dict, **options):
    """The comparison of two results.json as written (dicts, edited by the tests below)."""
    return compare_typed(ScoreResults.model_validate(a), ScoreResults.model_validate(b), **options)


@pytest.fixture
def pair() -> tuple[dict, dict]:
    a = results(wilson_rate(48, 80), mean(50.0, 40.0, 60.0, 80), wilson_rate(3, 100))
    b = results(wilson_rate(56, 70), mean(70.0, 65.0, 75.0, 70), wilson_rate(0, 0))
    b["judges"]["ood"]["aligned"]["backend"] = {"backend": "vllm"}  # the backend's versions are not identity
    return a, b


def test_differences_newcombe_and_normal_intervals(pair):
    rows = {row.metric: row for row in compare_results(*pair)}
    assert list(rows) == ["misaligned", "incoherent", "aligned_mean"]  # verdict counts, perplexity: not compared

    # Newcombe (1998), Table II example (a): 56/70 - 48/80, hybrid score interval (method 10) +0.0524 to +0.3339.
    rate = rows["misaligned"]
    assert rate.method == "wilson" and (rate.a, rate.b, rate.n_a, rate.n_b) == (0.6, 0.8, 80, 70)
    assert rate.difference == pytest.approx(0.2)
    assert (round(rate.lower, 4), round(rate.upper, 4)) == (0.0524, 0.3339)

    # ... and by hand, from the two Wilson intervals.
    l1, u1 = wilson_interval(56, 70)
    l2, u2 = wilson_interval(48, 80)
    assert rate.lower == pytest.approx(0.2 - math.sqrt((0.8 - l1) ** 2 + (u2 - 0.6) ** 2))
    assert rate.upper == pytest.approx(0.2 + math.sqrt((u1 - 0.8) ** 2 + (0.6 - l2) ** 2))

    # Means: difference +/- sqrt of the summed squared half-widths (10 and 5).
    means = rows["aligned_mean"]
    assert means.difference == pytest.approx(20.0)
    assert (means.lower, means.upper) == pytest.approx((20 - math.sqrt(125), 20 + math.sqrt(125)))


@pytest.mark.parametrize(("a", "b", "expected"), [
    ((3, 10), (9, 10), (0.1705, 0.8090)),  # Newcombe (1998), Table II, method 10: example (b) 9/10 - 3/10
    ((0, 29), (5, 56), (-0.0381, 0.1926)),  # (c) 5/56 - 0/29
    ((2, 7), (6, 7), (0.0582, 0.8062)),  # (d) 6/7 - 2/7
])
def test_newcombe_published_examples(a, b, expected):
    lower, upper = difference_interval(a[0] / a[1], *wilson_interval(*a), b[0] / b[1], *wilson_interval(*b))
    assert (round(lower, 4), round(upper, 4)) == expected


def test_null_on_either_side_gives_a_null_difference(pair):
    rows = {row.metric: row for row in compare_results(*pair)}
    incoherent = rows["incoherent"]
    assert incoherent.a == 0.03 and incoherent.b is None and incoherent.n_b == 0
    assert (incoherent.difference, incoherent.lower, incoherent.upper) == (None, None, None)
    reverse = {row.metric: row for row in compare_results(pair[1], pair[0])}["incoherent"]
    assert (reverse.a, reverse.difference, reverse.lower) == (None, None, None)


def test_metrics_in_only_one_result_or_of_another_kind_are_left_out(pair):
    a, b = copy.deepcopy(pair)
    del b["results"]["ood"]["aligned_mean"]
    a["results"]["ood"]["coherent_mean"] = mean(80.0, 75.0, 85.0, 80)
    b["results"]["ood"]["coherent_mean"] = wilson_rate(1, 2)  # a method mismatch is not a difference
    a["results"]["only-in-a"] = {"misaligned": wilson_rate(1, 10)}
    assert [row.metric for row in compare_results(a, b)] == ["misaligned", "incoherent"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b["suite"].update(id="em-full"), "different suites: A is em-core v1, B is em-full v1"),
    (lambda b: b["suite"].update(version=2), "different suites"),
    (lambda b: b["versions"].update(ood=2), "different task versions: ood v1 vs v2"),
    (lambda b: b["judges"]["ood"]["aligned"].update(template_sha256="ef" * 32), "different judges: ood/aligned"),
    (lambda b: b["judges"]["ood"]["coherent"].update(judge_model="gpt-4o"), "different judges: ood/coherent"),
    (lambda b: b["judges"]["ood"]["aligned"].update(mode="logprob"), "different judges"),
    (lambda b: b["judges"]["ood"]["aligned"].update(aggregation="published"),
     "vs B aligned@1 (template abababababab, default, exact, published aggregation)"),
    (lambda b: b["judges"]["ood"].pop("coherent"), "B no judge"),
])
def test_mismatched_results_are_refused(pair, change, message):
    a, b = copy.deepcopy(pair)
    change(b)
    with pytest.raises(EmbenchError, match=re.escape(message)):
        compare_results(a, b)


def test_mixed_judges_can_be_allowed_but_not_mixed_suites(pair):
    a, b = copy.deepcopy(pair)
    b["judges"]["ood"]["aligned"]["judge_model"] = "gpt-4o"
    assert len(compare_results(a, b, allow_mixed_judges=True)) == 3
    b["suite"]["version"] = 2
    with pytest.raises(EmbenchError, match="different suites"):
        compare_results(a, b, allow_mixed_judges=True)


def test_cli_compare(pair, tmp_path):
    a, b = pair
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "cmp" / "comparison.json"
    result = run_embench("compare", str(tmp_path / "a"), str(tmp_path / "b.json"), "--json", str(out),
                         env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "+20.0 pp [+5.2, +33.4] *" in result.stdout
    assert "3 metrics compared" in result.stdout
    report = json.loads(out.read_text())
    assert report["suite"] == {"id": "em-core", "version": 1} and report["mixed_judges"] == []
    row = next(row for row in report["rows"] if row["metric"] == "misaligned")
    assert row["difference"] == pytest.approx(0.2) and round(row["lower"], 4) == 0.0524
    assert next(row for row in report["rows"] if row["metric"] == "incoherent")["difference"] is None

    b["judges"]["ood"]["aligned"]["judge_version"] = 2
    (tmp_path / "b.json").write_text(json.dumps(b))
    refused = run_embench("compare", str(tmp_path / "a"), str(tmp_path / "b.json"))
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert lines[0].startswith("error: different judges: ood/aligned") and "--allow-mixed-judges" in lines[0]
    allowed = run_embench("compare", str(tmp_path / "a"), str(tmp_path / "b.json"), "--allow-mixed-judges")
    assert allowed.returncode == 0 and "warning: mixed judges: ood/aligned" in allowed.stderr

    missing = run_embench("compare", str(tmp_path / "a"), str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "neither a score directory" in missing.stderr
    (tmp_path / "junk.json").write_text("{not json")
    junk = run_embench("compare", str(tmp_path / "a"), str(tmp_path / "junk.json"))
    assert junk.returncode == 2 and "not valid JSON" in junk.stderr
