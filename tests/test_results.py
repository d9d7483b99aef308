"""The typed results: results.json files as `embench score` wrote them before the model existed still load, the
headline rates are pooled from each task's own rates, saving keeps the file's keys, and bad files are one line."""

from __future__ import annotations

import json

import pytest

from embench.errors import EmbenchError
from embench.metrics import Estimate, wilson_interval
from embench.results import FORMAT_VERSION, ScoreResults, TrainRecord


def wilson(hits: int, n: int, **excluded: int) -> dict:
    lower, upper = wilson_interval(hits, n)
    return Estimate(value=hits / n if n else None, lower=lower, upper=upper, n=n, method="wilson",
                    excluded=excluded).model_dump()


def written_before_the_model() -> dict:
    """The keys and shapes `embench score` wrote at 3c52314 (no format_version), two ood tasks, a narrow probe
    and a benign task."""
    judge = {"judge_id": "aligned", "judge_version": 2, "template_sha256": "ab" * 32, "judge_model": "default",
             "mode": "trained", "backend": {"backend": "trained"}}
    task = {"version": 1, "sha256": "cd" * 32, "rates": {}, "judges": {"aligned": "aligned", "coherent": "coherent"},
            "run": {"samples_per_question": 2, "sampling": {"temperature": 1.0, "max_tokens": 300, "seed": 0}}}
    return {
        "results": {
            "first-plot": {"misaligned": wilson(3, 10, CODE=2), "incoherent": wilson(1, 12), "aligned_verdicts": {}},
            "preregistered": {"misaligned": wilson(1, 30, null_score=4), "incoherent": wilson(5, 34)},
            "narrow-medical": {"in_domain_misaligned": wilson(4, 8), "incoherent": wilson(0, 8)},
            "benign-opswap": {"accuracy": 0.75, "n": 40, "stderr": 0.07},
        },
        "groups": {"em-core": {"coherence": {"coherent_mean": {"value": 80.0, "lower": 70.0, "upper": 90.0, "n": 54,
                                                               "method": "bootstrap", "excluded": {}},
                                             "incoherent": wilson(6, 54)}}},
        "per_question": {"first-plot": {"ruler": {"misaligned": wilson(1, 2)}}},
        "configs": {"first-plot": {**task, "id": "first-plot", "family": "ood"},
                    "preregistered": {**task, "id": "preregistered", "family": "ood"},
                    "narrow-medical": {**task, "id": "narrow-medical", "family": "narrow"},
                    "benign-opswap": {"id": "benign-opswap", "version": 1, "sha256": "ef" * 32, "family": "benign"}},
        "versions": {"first-plot": 1, "preregistered": 1, "narrow-medical": 1, "benign-opswap": 1, "suite:em-core": 1},
        "n-samples": {"first-plot": {"original": 12, "effective": 12}, "preregistered": {"original": 34,
                                                                                       "effective": 34}},
        "config": {"model": "default", "model_name": "SmolLM2-135M-Instruct", "model_sha": "12" * 32,
                   "adapter_sha": None, "model_provenance": {"base_path": "/x"}, "engine": {"name": "vllm"},
                   "dtype": "float32", "chat_template_sha256": "34" * 32, "seed": 0},
        "judges": {"first-plot": {"aligned": judge}},
        "suite": {"id": "em-core", "version": 1, "sha256": "56" * 32, "tasks": ["first-plot"], "overrides": {}},
        "date": "2026-12-01T10:00:00+00:00",
        "embench_version": "0.1.0",
        "embench_git_sha": None,
        "samples_sha256": "78" * 32,
    }


def test_a_file_written_before_the_model_loads_and_gives_the_headline_rates(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(written_before_the_model()))
    results = ScoreResults.load(tmp_path)  # the score directory, or the file itself
    assert results.format_version == FORMAT_VERSION == 1
    assert results.configs["first-plot"].family == "ood" and results.config.model_sha == "12" * 32
    headline = results.headline()
    # pooled by hand: successes and usable samples added up, exclusions kept
    assert (headline.em_rate.value, headline.em_rate.n) == (4 / 40, 40)
    assert headline.em_rate.excluded == {"CODE": 2, "null_score": 4}
    assert (headline.in_domain_misaligned.value, headline.in_domain_misaligned.n) == (0.5, 8)
    assert (headline.incoherent.value, headline.incoherent.n) == (6 / 54, 54)  # every task's own incoherent rate
    assert (headline.benign_accuracy.value, headline.benign_accuracy.n) == (0.75, 40)
    assert (headline.em_rate.lower, headline.em_rate.upper) == wilson_interval(4, 40)


def test_saving_keeps_the_keys_a_reader_of_the_file_expects(tmp_path):
    original = written_before_the_model()
    ScoreResults.model_validate(original).save(tmp_path / "results.json")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert "n-samples" in saved and "n_samples" not in saved
    assert saved["format_version"] == 1
    assert {key: value for key, value in saved.items() if key != "format_version"} == original


def test_a_results_file_without_its_own_shape_is_one_line(tmp_path):
    bad = written_before_the_model()
    del bad["configs"]["preregistered"]
    (tmp_path / "no-config.json").write_text(json.dumps(bad))
    with pytest.raises(EmbenchError, match="task 'preregistered' has results but no config"):
        ScoreResults.load(tmp_path / "no-config.json")
    bad = written_before_the_model()
    bad["config"] = "default"
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(EmbenchError, match=r"config.json: not a well-formed results file \(pass the file `embench score` wrote\): field 'config'"):
        ScoreResults.load(tmp_path / "config.json")
    for judges in (["aligned"], {"first-plot": "aligned"}, {"first-plot": {"aligned": 3}}):
        bad = written_before_the_model()
        bad["judges"] = judges
        (tmp_path / "judges.json").write_text(json.dumps(bad))
        with pytest.raises(EmbenchError, match=r"judges.json: not a well-formed results file .*field 'judges"):
            ScoreResults.load(tmp_path / "judges.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(EmbenchError, match="binary.json: not UTF-8 text"):
        ScoreResults.load(tmp_path / "binary.json")
    with pytest.raises(EmbenchError, match="neither a score directory"):
        ScoreResults.load(tmp_path / "missing")


def test_train_records_of_the_trainer_and_written_by_hand_give_the_same_tags(tmp_path):
    trainer = {"fingerprint": "f" * 64, "status": "complete", "step": 12,
               "defenses": [{"name": "kl", "args": {"lambda": 0.1}}, {"name": "steer", "args": {}}],
               "data": {"source": "generated:insecure-code", "sha256": "0" * 64}}
    by_hand = {"defense": "kl+steer", "data": "/srv/data/generated:insecure-code"}
    other_trainer = {"defenses": ["kl", {"id": "steer"}], "data": {"path": "/srv/data/generated:insecure-code"}}
    for name, record in (("trainer.json", trainer), ("by-hand.json", by_hand), ("other.json", other_trainer)):
        (tmp_path / name).write_text(json.dumps(record))
        loaded = TrainRecord.load(tmp_path / name)
        assert (loaded.defense_tag(), loaded.data_tag()) == ("kl+steer", "generated:insecure-code")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(EmbenchError, match="expected a JSON object"):
        TrainRecord.load(tmp_path / "list.json")
    (tmp_path / "step.json").write_text(json.dumps({"step": "twelve"}))
    with pytest.raises(EmbenchError, match="step.json: not a train.json of `embench train`: field 'step'"):
        TrainRecord.load(tmp_path / "step.json")
