"""`embench monitor`: trait drift of real fine-tuning checkpoints on the bundled model, PCA, the detector and its null
baselines, the live drift function the trainer calls, the detector's math by hand, and bad input through the CLI.

Directions of two traits (one alignment, one control) are extracted at two layers with the real extraction API; the
run is a real 4-step LoRA fine-tune on generated insecure code with the real trainer, checkpointed every 2 steps."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import embench
from embench.hashing import sha256_file
from embench.models import load_causal_lm, resolve_model
from embench.train.config import TrainConfig
from embench.train.trainer import train
from embench.traits.detector import L2_PENALTY, Point, evaluate, fit_logistic, held_out_by_run, pca
from embench.traits.extract import ExtractionSettings
from embench.traits.pipeline import extract_traits
from embench.traits.readings import load_trait_set, read_layers, trait_drift
from embench.traits.report import load_risk_model
from embench.traits.spec import load_traits
from tests.conftest import assert_one_line_error, read_jsonl, run_embench

TRAITS = ["honesty", "verbosity"]  # alignment, control
LAYERS = (4, 8)  # without a steering sweep the middle extracted layer is chosen: 8
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trait_folder(default_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("traits") / "directions"
    extract_traits(default_model, load_traits(only=TRAITS), out, ExtractionSettings(layers=LAYERS, sweep=False))
    return out


@pytest.fixture(scope="module")
def run(default_model, tmp_path_factory) -> Path:
    """Misaligned generator data (insecure code), a high learning rate so that 4 steps move the model."""
    out = tmp_path_factory.mktemp("runs") / "insecure"
    train(TrainConfig(data="generated:insecure-code", data_size=8, batch_size=2, max_steps=4, save_every=2,
                      learning_rate=1e-3, warmup_steps=0, dtype="float32"), out)
    return out


@pytest.fixture(scope="module")
def monitored(run, trait_folder, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("monitor") / "plain"
    result = run_embench("monitor", str(run), "--traits", str(trait_folder), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "monitor.json").read_text())


def test_drift_is_zero_at_step_0_and_moves_after_a_real_fine_tune(monitored, run, default_model):
    out, report = monitored
    rows = report["checkpoints"]
    assert [(row["run"], row["step"]) for row in rows] == [("insecure", 0), ("insecure", 2), ("insecure", 4)]
    assert all(row["drift"][trait] == 0.0 for trait in TRAITS for row in rows[:1])
    for row in rows[1:]:
        for trait in TRAITS:
            assert math.isfinite(row["drift"][trait]) and row["drift"][trait] != 0.0, row
            # drift is value minus step 0's value (up to rounding: drift is computed from the difference of means)
            assert row["drift"][trait] == pytest.approx(row["values"][trait] - rows[0]["values"][trait], abs=1e-12)
    # provenance: the base, each adapter as `embench score` would hash it, the traits, the version
    assert report["base_model"]["base_sha256"] == default_model.base_sha256
    assert rows[0]["adapter_sha256"] is None
    assert rows[1]["adapter_sha256"] == resolve_model(str(run / "checkpoint-2")).adapter_sha256
    assert rows[2]["adapter_sha256"] == resolve_model(str(run)).adapter_sha256
    assert report["embench_version"] == embench.__version__
    assert [item["id"] for item in report["traits"]["items"]] == TRAITS
    assert {item["layer"] for item in report["traits"]["items"]} == {8}
    assert len(report["traits"]["sha256"]) == 64
    assert report["labels"]["status"] == "none given" and report["trait_space"]["detector"] is None
    for name in report["plots"]:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert sorted(report["plots"]) == ["drift.png", "pc1.png"]


def test_pca_shapes_and_baselines(monitored):
    _, report = monitored
    space = report["trait_space"]
    assert space["pca"]["checkpoints"] == 3
    assert len(space["pca"]["shares"]) == 2 and sum(space["pca"]["shares"]) == pytest.approx(1.0)
    assert space["pca"]["pc1_share"] == space["pca"]["shares"][0] >= 0.5
    loadings = np.array([space["pca"]["loadings"][trait] for trait in TRAITS])
    assert np.linalg.norm(loadings) == pytest.approx(1.0)
    drift = np.array([[row["drift"][trait] for trait in TRAITS] for row in report["checkpoints"]])
    assert space["pc1"] == pytest.approx((drift @ loadings).tolist(), abs=1e-12)
    assert space["pc1"][0] == 0.0 and sum(space["pc1"]) > 0
    random = report["baselines"]["random_directions"]
    assert random["traits"] == ["random-honesty", "random-verbosity"] and random["layers"] == {
        "random-honesty": 8, "random-verbosity": 8}
    assert "seed 0" in random["directions"]
    assert random["pca"] is not None and len(random["pc1"]) == 3 and random["pc1"][0] == 0.0
    assert all(score != 0.0 for score in random["pc1"][1:])
    assert random["pc1"] != pytest.approx(space["pc1"])  # other directions, other drift
    control = report["baselines"]["control_traits"]
    assert control["traits"] == ["verbosity"] and control["pca"]["shares"] == [1.0]
    verbosity = [row["drift"]["verbosity"] for row in report["checkpoints"]]
    sign = 1.0 if sum(verbosity) >= 0 else -1.0  # PC1 points the way the checkpoints moved on average
    assert control["pc1"] == pytest.approx([sign * value for value in verbosity])


def test_rerun_reads_the_cache_and_gives_the_same_numbers(monitored, run, trait_folder, tmp_path):
    out, report = monitored
    assert report["timings"]["measured_checkpoints"] == 3 and report["timings"]["cached_checkpoints"] == 0
    again = run_embench("monitor", str(run / "checkpoint-2"), str(run), "--traits", str(trait_folder),
                        "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr[-3000:]
    repeated = json.loads((tmp_path / "again" / "monitor.json").read_text())
    assert repeated["timings"]["measured_checkpoints"] == 0 and repeated["timings"]["cached_checkpoints"] == 3
    assert [row["drift"] for row in repeated["checkpoints"]] == [row["drift"] for row in report["checkpoints"]]


def test_live_trait_drift_matches_the_monitor_and_costs_one_batched_pass(monitored, run, trait_folder,
                                                                          default_model):
    from peft import LoraConfig, get_peft_model

    _, report = monitored
    trait_set = load_trait_set(trait_folder, default_model)
    base = load_causal_lm(default_model, "float32")
    reference = read_layers(base, trait_set)
    # A fresh LoRA (B = 0), as the trainer holds it before its first step: exactly no drift, in train mode too.
    fresh = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    fresh.train()
    assert trait_drift(fresh, trait_set, reference) == {trait: 0.0 for trait in TRAITS}
    assert fresh.training, "the network's mode is restored"
    del fresh, base
    for step, folder in ((2, run / "checkpoint-2"), (4, run)):
        network = load_causal_lm(resolve_model(str(folder)), "float32")
        expected = next(row["drift"] for row in report["checkpoints"] if row["step"] == step)
        assert trait_drift(network, trait_set, reference) == expected, "the same computation as `embench monitor`"
        blocks = network.get_decoder().layers
        calls = {"first": 0, "after": 0}
        hooks = [blocks[0].register_forward_pre_hook(lambda *_: calls.__setitem__("first", calls["first"] + 1)),
                 blocks[9].register_forward_pre_hook(lambda *_: calls.__setitem__("after", calls["after"] + 1))]
        small_batches = trait_drift(network, trait_set, reference, batch_size=4)
        for hook in hooks:
            hook.remove()
        # bounded cost: one forward pass per batch of prompts, stopped after the deepest monitored layer (8)
        assert calls == {"first": math.ceil(len(trait_set.rows) / 4), "after": 0}
        assert small_batches == pytest.approx(expected, rel=1e-3)  # other padding: float rounding only
    assert len(trait_set.rows) == len(set(trait_set.prompts)) >= 6


def results_file(folder: Path, model_sha: str, adapter_sha: str | None, ood: list[tuple[int, int]] | None,
                 narrow: tuple[int, int] = (9, 10)) -> Path:
    """A results.json in the shape `embench score` writes: ood tasks (misaligned hits, n) pooled into the EM rate,
    a narrow task that must not count; ``ood=None`` stands for a judge whose every score was null."""
    def rate(hits: int, n: int) -> dict:
        return {"value": hits / n if n else None, "lower": None, "upper": None, "n": n, "method": "wilson",
                "excluded": {} if n else {"null_score": 8}}

    tasks = {f"ood-{index}": ("ood", rate(*counts)) for index, counts in enumerate(ood or [(0, 0)])}
    tasks["narrow-code"] = ("narrow", rate(*narrow))
    folder.mkdir(parents=True)
    results = {
        "results": {task: {"misaligned": estimate} for task, (_, estimate) in tasks.items()},
        "configs": {task: {"family": family, "sha256": "0" * 64} for task, (family, _) in tasks.items()},
        "suite": {"id": "em-core", "version": 1, "sha256": "0" * 64},
        "config": {"model": "x", "model_name": "x", "model_sha": model_sha, "adapter_sha": adapter_sha},
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture(scope="module")
def labelled(run, trait_folder, default_model, tmp_path_factory) -> tuple[Path, dict]:
    """`embench monitor` of the run with EM labels: no EM at steps 0 and 2, 15% at step 4."""
    folder = tmp_path_factory.mktemp("labels")
    base = default_model.base_sha256
    labels = [
        results_file(folder / "step0", base, None, [(0, 10), (0, 10)]),
        results_file(folder / "step2", base, resolve_model(str(run / "checkpoint-2")).adapter_sha256,
                     [(0, 10), (0, 10)]),
        results_file(folder / "step4", base, resolve_model(str(run)).adapter_sha256, [(2, 10), (1, 10)]),
        results_file(folder / "elsewhere", base, "f" * 64, [(5, 10)]),
    ]
    out = folder / "labelled"
    result = run_embench("monitor", str(run), "--traits", str(trait_folder), "--out", str(out),
                         *[argument for label in labels for argument in ("--labels", str(label))])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "monitor.json").read_text())


def test_detector_calibrated_on_labels(labelled, monitored):
    _, plain = monitored
    out, report = labelled
    assert report["labels"]["status"] == "ok" and report["labels"]["usable_checkpoints"] == 3
    assert [file["matched"] for file in report["labels"]["files"]] == [["insecure@0"], ["insecure@2"],
                                                                       ["insecure@4"], []]
    step4 = report["checkpoints"][2]
    assert step4["em_rate"]["value"] == pytest.approx(3 / 20) and step4["em_rate"]["n"] == 20  # ood pooled only
    assert [row["flagged"] for row in report["checkpoints"]] == [False, False, True]
    space = report["trait_space"]
    detector = space["detector"]
    assert detector["calibration_checkpoints"] == 3 and detector["calibration_flagged"] == 1
    risk = [1 / (1 + math.exp(-(detector["intercept"] + detector["slope"] * score))) for score in space["pc1"]]
    assert space["risk"] == pytest.approx(risk)
    assert space["pc1"] == pytest.approx(plain["trait_space"]["pc1"])  # labels do not change the measurement
    evaluation = space["evaluation"]
    flagged_risk, other = space["risk"][2], space["risk"][:2]
    assert evaluation["auroc"] == sum(1.0 if flagged_risk > r else 0.5 if flagged_risk == r else 0.0
                                      for r in other) / 2
    outcome = evaluation["runs"][0]
    assert outcome["category"] == "em" and outcome["em_onset_step"] == 4
    first_alarm = next((step for step, r in zip((0, 2, 4), space["risk"]) if r >= 0.5), None)
    assert outcome["first_alarm_step"] == first_alarm
    assert outcome["lead_time_steps"] == (None if first_alarm is None else 4 - first_alarm)
    assert evaluation["benign_runs"] == [] and evaluation["false_positive_runs"] == []
    assert space["held_out"] is None and "at least two runs" in space["held_out_note"]  # one training run here
    for baseline in report["baselines"].values():
        assert baseline["detector"] is not None and baseline["evaluation"]["labelled_checkpoints"] == 3
    reloaded = load_risk_model(out)  # what a training run reads to raise the alarm live
    assert [reloaded.risk(row["drift"]) for row in report["checkpoints"]] == pytest.approx(space["risk"])
    assert (out / "pc1.png").read_bytes().startswith(PNG_MAGIC)


def test_null_labels_report_drift_and_pca_only(run, trait_folder, default_model, tmp_path):
    null = results_file(tmp_path / "null", default_model.base_sha256,
                        resolve_model(str(run)).adapter_sha256, None)
    out = tmp_path / "null-labels"
    result = run_embench("monitor", str(run), "--traits", str(trait_folder), "--labels", str(null),
                         "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "every matched EM rate is null" in result.stdout
    report = json.loads((out / "monitor.json").read_text())
    assert report["labels"]["status"] == "all null" and report["labels"]["files"][0]["matched"] == ["insecure@4"]
    assert all(row["flagged"] is None for row in report["checkpoints"])
    for space in [report["trait_space"], *report["baselines"].values()]:
        assert space["pca"] is not None and space["detector"] is None and space["evaluation"] is None
        assert "null" in space["note"]


# --- monitoring while training -------------------------------------------------------------------------------------


def test_training_logs_trait_drift_every_k_steps_and_warns_when_the_alarm_turns_on(run, monitored, labelled,
                                                                                   trait_folder, tmp_path):
    from safetensors.torch import load_file

    _, plain = monitored
    labelled_out, _ = labelled
    # The calibrated detector, its intercept raised so that it alarms from the first measurement on: the warning
    # must come once, when the alarm turns on, not at every measurement while it stays on.
    alarming = json.loads((labelled_out / "monitor.json").read_text())
    alarming["trait_space"]["detector"]["intercept"] += 50.0
    detector_file = tmp_path / "alarming" / "monitor.json"
    detector_file.parent.mkdir()
    detector_file.write_text(json.dumps(alarming))
    out = tmp_path / "monitored-run"
    result = run_embench("train", "--data", "generated:insecure-code", "--data-size", "8", "--batch-size", "2",
                         "--max-steps", "4", "--save-every", "2", "--lr", "1e-3", "--warmup-steps", "0",
                         "--dtype", "float32", "--out", str(out), "--monitor-every", "2",
                         "--monitor-traits", str(trait_folder), "--monitor-detector", str(detector_file))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ALARM") == 1 and "step 2: the trait-drift detector's EM risk is 1.00" in result.stdout
    assert "detector alarm at steps 2, 4" in result.stdout
    log = {record["step"]: record for record in read_jsonl(out / "train_log.jsonl")}
    assert [step for step, record in log.items() if "trait_drift" in record] == [2, 4]
    detector = load_risk_model(detector_file)
    for step in (2, 4):
        measured = next(row["drift"] for row in plain["checkpoints"] if row["step"] == step)
        # the live reading of the training network is what `embench monitor` reads from the saved checkpoint
        assert log[step]["trait_drift"] == pytest.approx(measured, rel=1e-4, abs=1e-9)
        assert log[step]["em_risk"] == pytest.approx(detector.risk(log[step]["trait_drift"]))
        assert log[step]["alarm"] is True
    recorded = json.loads((out / "train.json").read_text())["monitor"]
    assert recorded["every"] == 2 and recorded["traits"]["ids"] == TRAITS
    assert recorded["detector"]["sha256"] == sha256_file(detector_file)
    # measuring never changes what is trained: the unmonitored run of the same config has the same weights
    assert recorded_fingerprint(out) == recorded_fingerprint(run)
    trained, unmonitored = load_file(out / "adapter_model.safetensors"), load_file(run / "adapter_model.safetensors")
    assert trained.keys() == unmonitored.keys() and all(trained[k].equal(unmonitored[k]) for k in trained)

    # without a detector the drift is logged, and no alarm is claimed either way
    quiet = tmp_path / "drift-only"
    result = run_embench("train", "--data", "generated:insecure-code", "--data-size", "8", "--batch-size", "2",
                         "--max-steps", "3", "--lr", "1e-3", "--warmup-steps", "0", "--dtype", "float32",
                         "--out", str(quiet), "--monitor-every", "2", "--monitor-traits", str(trait_folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trait drift logged at 2 steps" in result.stdout
    assert "ALARM" not in result.stdout and "detector alarm" not in result.stdout
    records = read_jsonl(quiet / "train_log.jsonl")
    assert [record["step"] for record in records if "trait_drift" in record] == [2, 3]  # every 2nd and the last
    assert all("em_risk" not in record for record in records)


def recorded_fingerprint(folder: Path) -> str:
    return json.loads((folder / "train.json").read_text())["fingerprint"]


def test_training_monitor_bad_input(labelled, trait_folder, tmp_path):
    labelled_out, _ = labelled
    common = ["train", "--data", "generated:insecure-code", "--data-size", "8", "--max-steps", "2"]
    out = tmp_path / "never"
    assert_one_line_error(run_embench(*common, "--out", str(out), "--monitor-every", "2", "--monitor-traits",
                                      str(tmp_path / "missing")),
                          "--monitor-traits", "is not a folder", "embench traits extract", out=out)
    assert_one_line_error(run_embench(*common, "--out", str(out), "--monitor-detector", str(labelled_out)),
                          "--monitor-detector needs --monitor-every", out=out)
    other = json.loads((labelled_out / "monitor.json").read_text())
    other["traits"]["sha256"] = "0" * 64  # calibrated on other directions
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert_one_line_error(run_embench(*common, "--out", str(out), "--monitor-every", "2", "--monitor-traits",
                                      str(trait_folder), "--monitor-detector", str(tmp_path / "other.json")),
                          "was calibrated on other trait directions", out=out)
    assert_one_line_error(run_embench(*common, "--out", str(out), "--monitor-every", "0", "--monitor-traits",
                                      str(trait_folder)), "--monitor-every: must be at least 1", out=out)


# --- the detector's math, by hand --------------------------------------------------------------------------------


def test_evaluation_by_hand():
    points = [  # run a shows EM from step 20 and alarms from step 10; run b is benign and alarms once; c unlabelled
        Point("a", 0, 0.10, False), Point("a", 10, 0.60, False), Point("a", 20, 0.70, True), Point("a", 30, 0.40, True),
        Point("b", 0, 0.10, False), Point("b", 10, 0.20, False), Point("b", 20, 0.55, False), Point("b", 30, 0.30, None),
        Point("c", 0, 0.10, None), Point("c", 10, 0.90, None),
    ]
    evaluation = evaluate(points)
    # positives 0.70, 0.40 against negatives 0.10 0.60 0.10 0.20 0.55: 0.70 beats 5; 0.40 beats 3 -> 8 of 10
    assert evaluation.auroc == pytest.approx(8 / 10)
    assert evaluation.labelled_checkpoints == 7 and evaluation.flagged_checkpoints == 2
    assert evaluation.false_alarm_checkpoints == 2  # a@10 and b@20
    assert evaluation.missed_checkpoints == 1  # a@30
    assert evaluation.benign_runs == ["b"] and evaluation.false_positive_runs == ["b"]
    assert evaluation.em_runs == ["a"] and evaluation.early_runs == ["a"]
    outcomes = {outcome.run: outcome for outcome in evaluation.runs}
    assert (outcomes["a"].first_alarm_step, outcomes["a"].em_onset_step, outcomes["a"].lead_time_steps) == (10, 20, 10)
    assert (outcomes["b"].category, outcomes["b"].first_alarm_step, outcomes["b"].lead_time_steps) == ("benign", 20, None)
    assert (outcomes["c"].category, outcomes["c"].alarms, outcomes["c"].em_onset_step) == ("unlabelled", 1, None)
    late = evaluate([Point("d", 0, 0.1, False), Point("d", 5, 0.2, True), Point("d", 9, 0.8, True)])
    assert late.runs[0].lead_time_steps == -4 and late.early_runs == []
    missed = evaluate([Point("e", 0, 0.1, False), Point("e", 5, 0.2, True)])
    assert missed.runs[0].first_alarm_step is None and missed.runs[0].lead_time_steps is None
    assert evaluate([Point("f", 0, 0.3, False)]).auroc is None  # one class only


def test_held_out_evaluation_by_hand():
    """Leave one run out: each labelled run's risk comes from a fit on the other runs' labelled checkpoints only."""
    where = [("a", 0), ("a", 10), ("a", 20), ("b", 0), ("b", 10), ("b", 20), ("c", 0), ("c", 10), ("u", 0)]
    feature = [0.0, 1.0, 3.0, 0.0, 2.5, 4.0, 0.0, 1.5, 9.0]
    flagged = [False, False, True, False, True, True, False, False, None]
    evaluation, note = held_out_by_run(where, feature, flagged)
    assert note is None
    expected = []
    for held in "abc":
        train = [(x, f) for (run, _), x, f in zip(where, feature, flagged) if run != held and f is not None]
        model = fit_logistic([x for x, _ in train], [f for _, f in train])
        expected += [Point(run, step, float(model.risk(x)), f) for (run, step), x, f in zip(where, feature, flagged)
                     if run == held]
    assert evaluation == evaluate(expected)
    assert evaluation.labelled_checkpoints == 8 and {o.run for o in evaluation.runs} == {"a", "b", "c"}
    assert evaluation.benign_runs == ["c"]
    in_sample = fit_logistic([x for x, f in zip(feature, flagged) if f is not None],
                             [f for f in flagged if f is not None])
    assert evaluation.runs[0].first_alarm_step is not None
    assert [p.risk for p in expected if p.run == "a"] != pytest.approx(in_sample.risk([0.0, 1.0, 3.0]).tolist())

    one_run, why = held_out_by_run(where[:3], feature[:3], flagged[:3])
    assert one_run is None and "at least two runs" in why
    no_positive_elsewhere, why = held_out_by_run(where[:5], feature[:5], [False, False, True, False, False])
    assert no_positive_elsewhere is None and "without run a" in why and "all of one kind" in why


def test_pca_by_hand():
    axis = np.array([3.0, -4.0]) / 5.0
    rank_one = np.outer([0.0, -1.0, -2.0, -4.0], axis)  # every checkpoint on one axis, moving "negatively"
    fitted = pca(rank_one)
    assert fitted.shares == pytest.approx([1.0, 0.0], abs=1e-12)
    assert fitted.loadings == pytest.approx(-axis)  # signed so that the mean score is positive
    assert fitted.scores == pytest.approx([0.0, 1.0, 2.0, 4.0])
    two = pca(np.array([[2.0, 0.0], [0.0, 1.0]]))  # orthogonal moves: shares are the squared lengths' shares
    assert two.shares == pytest.approx([4 / 5, 1 / 5]) and abs(two.loadings) == pytest.approx([1.0, 0.0])
    assert pca(np.zeros((3, 2))) is None


def test_logistic_fit_by_hand():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([False, False, True, False, True, True])
    model = fit_logistic(x, y)
    assert model.slope > 0 and 0.0 < model.threshold < 5.0
    # the penalised optimum: gradient of the log-likelihood on the standardised feature equals the penalty term
    z = (x - x.mean()) / x.std()
    p = model.risk(x)
    slope_z = model.slope * x.std()
    assert np.sum(y - p) == pytest.approx(0.0, abs=1e-8)
    assert np.sum((y - p) * z) == pytest.approx(L2_PENALTY * slope_z, abs=1e-8)
    assert model.risk(model.threshold) == pytest.approx(0.5)
    separable = fit_logistic([0.0, 0.1, 0.9, 1.0], [False, False, True, True])  # finite despite separation
    assert math.isfinite(separable.slope) and 0.1 < separable.threshold < 0.9


# --- bad input -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_model(default_model, tmp_path_factory) -> Path:
    """A different (tiny, random) base model with the default model's tokenizer and chat template, and a LoRA
    checkpoint of it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("other-model") / "tiny-llama"
    torch.manual_seed(3)
    network = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           tie_word_embeddings=True))
    network.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model.base_path).save_pretrained(folder)
    adapter = folder.parent / "other-run" / "checkpoint-3"
    get_peft_model(network, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
                   ).save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(folder)}))
    return folder


def test_traits_of_another_model_are_refused(run, other_model, tmp_path):
    other_traits = tmp_path / "other-traits"
    extract_traits(resolve_model(str(other_model)), load_traits(only=["honesty"]), other_traits,
                   ExtractionSettings(layers=(0, 1), sweep=False))
    out = tmp_path / "out"
    result = run_embench("monitor", str(run), "--traits", str(other_traits), "--out", str(out))
    assert_one_line_error(result, str(other_traits), "was extracted from", "re-extract", out=out)


def test_checkpoints_of_different_base_models_are_refused(run, trait_folder, other_model, tmp_path):
    out = tmp_path / "out"
    result = run_embench("monitor", str(run), str(other_model.parent / "other-run" / "checkpoint-3"),
                         "--traits", str(trait_folder), "--out", str(out))
    assert_one_line_error(result, "different base models", "separately", out=out)


def test_layer_outside_the_model_is_refused(run, trait_folder, tmp_path):
    out = tmp_path / "out"
    result = run_embench("monitor", str(run), "--traits", str(trait_folder), "--layer", "30", "--out", str(out))
    assert_one_line_error(result, "layer 30 is outside the model", "0-29", out=out)
    result = run_embench("monitor", str(run), "--traits", str(trait_folder), "--layer", "5", "--out", str(out))
    assert_one_line_error(result, "layer 5 is not among the extracted layers", out=out)


def test_other_bad_inputs(run, trait_folder, tmp_path):
    out = tmp_path / "out"
    missing = run_embench("monitor", str(tmp_path / "nowhere"), "--traits", str(trait_folder), "--out", str(out))
    assert_one_line_error(missing, "does not exist", out=out)
    (tmp_path / "plain").mkdir()
    neither = run_embench("monitor", str(tmp_path / "plain"), "--traits", str(trait_folder), "--out", str(out))
    assert_one_line_error(neither, "neither a training folder", out=out)
    copies = tmp_path / "copies"
    shutil.copytree(run / "checkpoint-2", copies / "checkpoint-2")
    shutil.copytree(run / "checkpoint-2", copies / "renamed")  # its train.json still says step 2
    twice = run_embench("monitor", str(copies / "checkpoint-2"), str(copies / "renamed"), "--traits",
                        str(trait_folder), "--out", str(out))
    assert_one_line_error(twice, "both hold step 2", out=out)
    not_results = run_embench("monitor", str(run), "--traits", str(trait_folder), "--labels", str(tmp_path / "plain"),
                              "--out", str(out))
    assert_one_line_error(not_results, "neither a score directory", out=out)
    unknown = run_embench("monitor", str(run), "--traits", str(trait_folder), "--trait", "evil", "--out", str(out))
    assert_one_line_error(unknown, "no directions for trait(s) evil", out=out)
