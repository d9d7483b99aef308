"""Judge calibration: the metric math on fixed numbers, the bundled calibration set, and a real calibrate run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from embench.errors import EmbenchError
from embench.judges.calibrate import (
    CATEGORIES,
    ItemResult,
    compute_metrics,
    default_calibration_set,
    load_calibration_set,
    resolve_calibration_set,
    target_for,
)
from embench.metrics import auroc, average_ranks, spearman
from tests.conftest import assert_one_line_error, run_embench

# --- metric math ------------------------------------------------------------------------------------------------


def test_auroc_extremes_and_ties():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1, 2], [3, 4, 5]) == 0.0
    assert auroc([7, 7, 7], [7, 7]) == 0.5


def test_auroc_hand_computed():
    # 0.9 and 0.8 beat both negatives (4 wins); 0.5 ties 0.5 (0.5) and beats 0.3 (1): 5.5 of 6 pairs.
    assert auroc([0.9, 0.8, 0.5], [0.5, 0.3]) == pytest.approx(5.5 / 6)
    # 2 beats 1, loses to 3; 4 beats both: 3 of 4.
    assert auroc([2, 4], [1, 3]) == pytest.approx(0.75)


def test_auroc_nulls_are_left_out_and_no_data_is_null():
    assert auroc([0.9, None, 0.8], [None, 0.1]) == 1.0
    assert auroc([], [1.0]) is None
    assert auroc([1.0], [None, None]) is None


def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert average_ranks([5, 5, 5]) == [2, 2, 2]
    assert average_ranks([3, 1, 2]) == [3, 1, 2]


def test_spearman_hand_computed():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = 1, 2.5, 2.5, 4 and y = 1, 3, 2, 4: cov 4.5, var 4.5 and 5 -> 4.5 / sqrt(22.5) = 3 / sqrt(10)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)) with d = 0, -1, 1, 0, 0 -> 1 - 12 / 120
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 4, 5]) == pytest.approx(0.9)


def test_spearman_nulls_and_no_data():
    # pairs with a None on either side are left out: what remains is perfectly monotone
    assert spearman([1, None, 3, 4, 2], [1, 99, None, 40, 20]) == pytest.approx(1.0)
    assert spearman([1, None], [None, 2]) is None  # no complete pair
    assert spearman([1], [1]) is None  # one pair
    assert spearman([5, 5, 5], [1, 2, 3]) is None  # no variance


def result(id: str, category: str, score, *, label=None, group=None, verdict=None, expected=None, pair=None,
           error=None) -> ItemResult:
    return ItemResult(id=id, category=category, label=label, group=group, expected_verdict=expected, pair_id=pair,
                      score=score, verdict=verdict, valid_mass=None if error else 0.9, error=error)


def test_metrics_on_fixed_results():
    results = [
        result("a1", "aligned", 90.0, label=95, group="positive"),
        result("a2", "aligned", None, label=92, group="positive"),
        result("m1", "blatantly_misaligned", 10.0, label=2, group="negative"),
        result("m2", "subtly_misaligned", 95.0, label=20, group="negative"),
        result("i1", "injection", 60.0, label=0, group="negative", pair="m1"),
        result("i2", "injection", 50.0, label=0, group="negative", pair="a2"),  # twin has no score: not a pair
        result("r1", "refusal", None, verdict="REFUSAL", expected="REFUSAL"),
        result("c1", "code", 40.0, verdict=None, expected="CODE"),
        result("x1", "incoherent", 50.0, label=50, verdict="CODE"),
        result("f1", "aligned", None, label=97, group="positive", error="timed out"),
    ]
    metrics = compute_metrics(results, ("CODE", "REFUSAL"))
    # positives 90 (a2, f1 null); negatives 10, 95, 60, 50: 90 beats 3 of 4
    assert metrics.auroc == pytest.approx(0.75)
    assert (metrics.auroc_positive, metrics.auroc_negative, metrics.auroc_excluded_null) == (1, 4, 2)
    # score/label pairs: (90,95) (10,2) (95,20) (60,0) (50,0) (50,50)
    assert metrics.spearman_n == 6
    assert metrics.spearman == pytest.approx(spearman([90, 10, 95, 60, 50, 50], [95, 2, 20, 0, 0, 50]))
    assert (metrics.verdict_accuracy, metrics.verdict_n) == (0.5, 2)
    # answered items expecting no verdict: a1 a2 m1 m2 i1 i2 x1 (f1 failed): x1 got CODE
    assert metrics.false_verdict_n == 7
    assert metrics.false_verdict_rate == pytest.approx(1 / 7)
    assert (metrics.null_count, metrics.scored_count, metrics.failed_count) == (3, 7, 1)
    assert metrics.null_share == pytest.approx(0.3)
    assert (metrics.injection_shift, metrics.injection_pairs) == (50.0, 1)
    assert metrics.per_category["aligned"].n == 3
    assert metrics.per_category["aligned"].scored == 1
    assert metrics.per_category["aligned"].mean_score == 90.0
    assert metrics.per_category["refusal"].mean_score is None  # no score: null, not 0
    assert metrics.per_category["refusal"].verdicts == {"REFUSAL": 1}


def test_metrics_without_data_are_null_not_zero():
    metrics = compute_metrics([result("r1", "refusal", None), result("c1", "code", None)], ())
    for name in ("auroc", "spearman", "verdict_accuracy", "false_verdict_rate", "injection_shift"):
        assert getattr(metrics, name) is None, name
    assert metrics.null_share == 1.0 and metrics.null_count == 2
    assert compute_metrics([], ("CODE",)).null_share is None


# --- the calibration set ----------------------------------------------------------------------------------------


def test_bundled_calibration_set_loads():
    path = default_calibration_set("aligned")
    items = load_calibration_set(path)
    assert len(items) >= 150
    assert {item.category for item in items} == set(CATEGORIES)
    ids = {item.id for item in items}
    pairs = [item for item in items if item.pair_id is not None]
    assert pairs and all(item.pair_id in ids for item in pairs)
    assert all(item.category == "injection" for item in pairs)
    by_id = {item.id: item for item in items}
    assert all(by_id[item.pair_id].category != "injection" for item in pairs)
    # both classes of the aligned judge's AUROC and verdict expectations are represented
    target = target_for("aligned")
    assert target.label_field == "label_aligned"
    assert sum(map(target.is_positive, items)) >= 20 and sum(map(target.is_negative, items)) >= 20
    assert {item.expected_verdict for item in items} >= {None, "CODE", "REFUSAL"}


def test_set_resolution():
    assert resolve_calibration_set("aligned") == default_calibration_set("aligned")
    assert target_for("coherent").label_field == "label_coherent"
    assert resolve_calibration_set("coherent").is_file()  # its own set, or the aligned set's coherence labels
    with pytest.raises(EmbenchError, match="no calibration set for judge medical_aligned: pass --set FILE"):
        resolve_calibration_set("medical_aligned")


@pytest.mark.parametrize("line, fragment", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "must be a JSON object"),
    ('{"id": "b", "category": "aligned", "question": "q"}', "field 'answer'"),
    ('{"id": "b", "category": "sideways", "question": "q", "answer": "a"}', "field 'category'"),
    ('{"id": "b", "category": "aligned", "question": "q", "answer": "a", "label_aligned": 150}', "field 'label_aligned'"),
    ('{"id": "a", "category": "aligned", "question": "q", "answer": "a"}', "duplicate id 'a'"),
    ('{"id": "b", "category": "injection", "question": "q", "answer": "a", "pair_id": "zz"}', "pair_id 'zz'"),
])
def test_malformed_set_lines_name_file_and_line(tmp_path, line, fragment):
    path = tmp_path / "set.jsonl"
    good = json.dumps({"id": "a", "category": "aligned", "question": "q", "answer": "a", "label_aligned": 90})
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(EmbenchError) as info:
        load_calibration_set(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and fragment in message and "\n" not in message


# --- the command ------------------------------------------------------------------------------------------------




def test_cli_malformed_set_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps({"id": f"x{n}", "category": "aligned", "question": "q", "answer": "a"}) for n in range(3)]
    lines[1] = lines[1][:-1]  # cut the closing brace
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "report.json"
    result = run_embench("judges", "calibrate", "aligned", "--set", str(path), "--out", str(out), timeout=120)
    assert_one_line_error(result, f"{path}:2:")
    assert not out.exists()


@pytest.mark.parametrize("args, fragment", [
    (("nope",), "unknown judge 'nope'"),
    (("aligned", "--judge-mode", "guess"), "unknown --judge-mode 'guess'"),
    (("medical_aligned",), "no calibration set for judge medical_aligned: pass --set FILE"),
    (("aligned", "--set", "/no/such/set.jsonl"), "does not exist"),
    (("aligned", "--limit", "0"), "--limit"),
])
def test_cli_bad_input(tmp_path, args, fragment):
    out = tmp_path / "report.json"
    result = run_embench("judges", "calibrate", *args, "--out", str(out), timeout=120)
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_cli_calibrate_with_the_bundled_judge(tmp_path):
    out = tmp_path / "report.json"
    result = run_embench("judges", "calibrate", "aligned", "--judge-model", "default", "--judge-mode", "exact",
                         "--limit", "24", "--out", str(out), check=True)
    assert "AUROC" in result.stdout and "null share" in result.stdout
    report = json.loads(out.read_text())
    assert report["judge"]["judge_id"] == "aligned" and report["judge"]["mode"] == "exact"
    assert report["judge"]["judge_model"].startswith("SmolLM2-135M-Instruct@sha256:")
    assert report["backend"]["backend"] == "hf"
    assert report["label_field"] == "label_aligned"
    calibration_set = report["calibration_set"]
    assert Path(calibration_set["path"]) == default_calibration_set("aligned")
    assert len(calibration_set["sha256"]) == 64 and calibration_set["n_items"] == 24
    assert len(report["items"]) == 24

    metrics = report["metrics"]
    for name in ("auroc", "spearman", "verdict_accuracy", "false_verdict_rate", "null_share", "injection_shift",
                 "per_category", "mean_valid_mass"):
        assert name in metrics, name
    assert 0.0 <= metrics["null_share"] <= 1.0
    assert metrics["null_count"] + metrics["scored_count"] == 24
    assert metrics["failed_count"] == 0
    assert metrics["null_count"] == sum(item["score"] is None for item in report["items"])
    assert metrics["null_share"] == pytest.approx(metrics["null_count"] / 24)
    assert sum(stats["n"] for stats in metrics["per_category"].values()) == 24
    assert sum(stats["scored"] for stats in metrics["per_category"].values()) == metrics["scored_count"]
    assert metrics["verdict_n"] + metrics["false_verdict_n"] == 24
    for item in report["items"]:
        assert 0.0 <= item["valid_mass"] <= 1.0 + 1e-9
        assert item["score"] is None or 0.0 <= item["score"] <= 100.0
    # the metrics agree with the per-item results they came from
    scored = [item for item in report["items"] if item["score"] is not None]
    for category, stats in metrics["per_category"].items():
        scores = [item["score"] for item in scored if item["category"] == category]
        assert stats["mean_score"] == (pytest.approx(sum(scores) / len(scores)) if scores else None)
    positives = [item["score"] for item in report["items"] if item["group"] == "positive"]
    negatives = [item["score"] for item in report["items"] if item["group"] == "negative"]
    assert metrics["auroc"] == (pytest.approx(auroc(positives, negatives)) if auroc(positives, negatives) is not None
                                else None)
    assert metrics["auroc_excluded_null"] == sum(score is None for score in positives + negatives)
