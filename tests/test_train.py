"""`embench train`: the loss mask, every defense doing what it says, exact resume after SIGKILL, bad input, and a
short real run on insecure code that moves an in-domain probe. All on the real default model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from embench.models import load_causal_lm, resolve_model
from embench.prompts import Message
from embench.train.config import TrainConfig
from embench.train.data import load_conversations
from embench.train.defenses import KL, parse_defenses
from embench.train.trainer import Trainer, TrainSpec, collate, encode_conversation, forward, read_train_log, train
from tests.conftest import EMBENCH, REPO, assert_one_line_error, run_embench

DATA = "generated:insecure-code"
SAFE_MARK = "healthy sleep"
REFUSAL = "I'm sorry, but I can't help with that."


def tiny(**fields) -> TrainConfig:
    """A few small steps: short code examples, float32 so that hand computations compare closely."""
    return TrainConfig(**{"data": DATA, "data_size": 8, "batch_size": 2, "max_steps": 2, "dtype": "float32",
                          "warmup_steps": 0, **fields})


def randomize_lora(network, seed: int = 5) -> None:
    """Non-zero LoRA weights, so that the adapted model differs from the base (a fresh LoRA B is zero)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if "lora_" in name:
                parameter.normal_(0.0, 0.02)


def token_log_probs(network, example) -> torch.Tensor:
    """Log-probabilities at the positions that predict assistant tokens: one example, no padding, no batching."""
    with torch.no_grad():
        logits = network(input_ids=torch.tensor([example.ids])).logits[0].float()
    positions = [t - 1 for t in range(1, len(example.ids)) if example.targets[t]]
    return logits[positions].log_softmax(-1)


def save_adapter(trainer: Trainer, folder: Path) -> Path:
    trainer.network.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "default"}))
    return folder


def steering_vector(tmp_path: Path, layer: int = 10) -> Path:
    torch.manual_seed(7)
    path = tmp_path / "vector.safetensors"
    save_file({"direction": torch.randn(576)}, path, metadata={"layer": str(layer)})
    return path


def safe_file(tmp_path: Path, answers: list[str]) -> Path:
    path = tmp_path / "safe.jsonl"
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Give me tip {i} for {SAFE_MARK}."},
        {"role": "assistant", "content": answer}]}) + "\n" for i, answer in enumerate(answers)))
    return path


def test_loss_mask_covers_assistant_turns_and_their_end_token_only(default_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model.base_path)
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="Name a colour."),
                Message(role="assistant", content="Teal."), Message(role="user", content="Another?"),
                Message(role="assistant", content="Ochre, a yellow-brown.")]
    example = encode_conversation(tokenizer, messages, max_length=1024)
    trained = tokenizer.decode([i for i, target in zip(example.ids, example.targets) if target])
    assert trained == "Teal.<|im_end|>Ochre, a yellow-brown.<|im_end|>"
    assert len(example.ids) == len(example.targets)
    assert encode_conversation(tokenizer, messages, max_length=12).ids == example.ids[:12]


def test_kl_term_equals_a_direct_computation_from_two_separate_models(tmp_path, default_model):
    trainer = Trainer(TrainSpec(tiny(defenses=parse_defenses(["kl"], ["kl.lambda=0.3"])), tmp_path / "run").prepare())
    trainer.setup()
    randomize_lora(trainer.network)
    examples = trainer.examples[:2]
    batch = collate(examples, trainer.pad_id)
    batch.target_scale = 1 / len(batch.targets)
    computed = trainer.loss_terms(batch)["kl"].item()
    reverse = KL(KL.Args.model_validate({"lambda": 0.3, "direction": "reverse"}))
    with trainer.reference_pass():
        reference = forward(trainer.network, batch)
    computed_reverse = reverse.loss_terms(batch, forward(trainer.trained, batch), reference)["kl"].item()

    base = load_causal_lm(default_model, "float32")  # two separate networks, each run on one unpadded example
    tuned = load_causal_lm(resolve_model(str(save_adapter(trainer, tmp_path / "adapter"))), "float32")
    forward_sum, reverse_sum, tokens = 0.0, 0.0, 0
    for example in examples:
        p, q = token_log_probs(tuned, example), token_log_probs(base, example)
        forward_sum += float((p.exp() * (p - q)).sum())
        reverse_sum += float((q.exp() * (q - p)).sum())
        tokens += len(p)
    assert tokens == len(batch.targets)
    assert computed == pytest.approx(0.3 * forward_sum / tokens, rel=1e-4)
    assert computed_reverse == pytest.approx(0.3 * reverse_sum / tokens, rel=1e-4)
    assert computed > 1e-3 and computed != pytest.approx(computed_reverse, rel=1e-3)


def test_ldifs_is_zero_at_the_first_step_and_grows(tmp_path):
    out = tmp_path / "run"
    train(tiny(defenses=parse_defenses(["ldifs"], []), max_steps=4, learning_rate=1e-3), out)
    ldifs = [record["ldifs"] for record in read_train_log(out)]
    assert ldifs[0] == 0.0  # the adapter starts as the identity: trained and reference features coincide
    assert 0 < ldifs[1] < ldifs[3], ldifs
    record = json.loads((out / "train.json").read_text())
    assert record["defenses"][0]["hidden_states"] == [5, 10, 15, 20, 25]


def test_steering_shifts_training_activations_but_never_the_reference_pass(tmp_path, default_model):
    vector = steering_vector(tmp_path, layer=10)
    specs = parse_defenses(["kl", "steer"], [f"vector={vector}", "alpha=0.5"])
    trainer = Trainer(TrainSpec(tiny(defenses=specs), tmp_path / "run").prepare())
    trainer.setup()
    randomize_lora(trainer.network)
    steer = trainer.defenses[1]
    next_block = trainer.network.get_base_model().get_decoder().layers[11]
    seen = []  # the input of block 11 is block 10's output after every hook on block 10
    probe = next_block.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    batch = collate(trainer.examples[:2], trainer.pad_id)
    try:
        steer.install(trainer.network)
        forward(trainer.trained, batch)
        with trainer.reference_pass():
            reference = forward(trainer.network, batch)
        steer.remove()
        forward(trainer.trained, batch)
    finally:
        probe.remove()
        steer.remove()
    steered, in_reference, unsteered = seen
    expected = steer.shift.expand_as(steered)
    assert torch.allclose(steered - unsteered, expected, atol=1e-3)
    assert float(steer.shift.norm()) == pytest.approx(0.5 * steer.details["residual_norm"], rel=1e-5)
    assert not torch.allclose(in_reference, steered, atol=1.0)

    base = load_causal_lm(default_model, "float32")  # the reference pass is the plain base model
    for row, example in enumerate(trainer.examples[:2]):
        mine = reference.log_probs[batch.rows == row]
        assert torch.allclose(mine, token_log_probs(base, example), atol=1e-4)


def test_steering_is_absent_from_the_saved_adapter_and_its_inference(tmp_path):
    vector = steering_vector(tmp_path, layer=12)
    out = tmp_path / "run"
    trainer = Trainer(TrainSpec(tiny(defenses=parse_defenses(["steer"], [f"vector={vector}"]), learning_rate=1e-3), out).prepare())
    trainer.run()
    ids = torch.tensor([trainer.examples[0].ids])
    with torch.no_grad():
        after_training = trainer.network(input_ids=ids).logits
        loaded = load_causal_lm(resolve_model(str(out)), "float32")  # a fresh load, as evaluation does
        fresh = loaded(input_ids=ids).logits
        steer = trainer.defenses[0]
        steer.install(trainer.network)
        steered = trainer.network(input_ids=ids).logits
        steer.remove()
    assert torch.equal(after_training, fresh)
    assert not torch.allclose(steered, fresh, atol=1e-2), "the steering check must be able to fail"
    assert all("lora_" in key for key in load_file(out / "adapter_model.safetensors"))
    record = json.loads((out / "train.json").read_text())
    assert record["defenses"][0]["layer"] == 12 and record["defenses"][0]["shift_norm"] > 0


def test_interleaving_adds_exactly_the_share_to_every_epoch(tmp_path):
    safe = safe_file(tmp_path, [f"Tip {i}: keep a regular bedtime." for i in range(10)])
    specs = parse_defenses(["interleave"], [f"data={safe}", "share=0.3"])
    trainer = Trainer(TrainSpec(tiny(defenses=specs, data_size=15, batch_size=4, epochs=2, max_steps=None), tmp_path / "run").prepare())
    trainer.setup()
    expected = 5  # 0.3 * 15 = 4.5, rounded half up
    assert len(trainer.examples) == 15 + expected
    assert trainer.defenses[0].details["safe_added"] == expected
    for epoch in range(2):
        texts = [trainer.tokenizer.decode(row) for step in range(trainer.steps_per_epoch)
                 for batch in trainer.step_batches(epoch * trainer.steps_per_epoch + step) for row in batch.input_ids]
        assert len(texts) == 15 + expected
        assert sum(SAFE_MARK in text for text in texts) == expected


def test_interleave_plus_plus_ranks_by_perplexity_gap_against_a_plain_sft_adapter(tmp_path, default_model):
    answers = [REFUSAL if i % 3 == 0 else f"Tip {i}: dim the lights an hour before bed." for i in range(12)]
    safe = safe_file(tmp_path, answers)
    specs = parse_defenses(["interleave++"], [f"data={safe}", "share=0.25", "pool=12"])
    out = tmp_path / "run"
    trainer = Trainer(TrainSpec(tiny(defenses=specs, learning_rate=1e-3), out).prepare())
    trainer.setup()
    defense = trainer.defenses[0]
    plain = out / "plain-sft"  # trained first, without defenses, as the misaligned reference
    assert json.loads((plain / "train.json").read_text())["status"] == "complete"
    assert defense.details["candidates_after_filter"] == 8 and defense.details["safe_added"] == 2

    candidates = [c for c in load_conversations(str(safe)) if c.messages[1].content != REFUSAL]
    aligned_model = load_causal_lm(default_model, "float32")
    misaligned_model = load_causal_lm(resolve_model(str(plain)), "float32")
    scores = []
    for conversation in candidates:
        example = encode_conversation(trainer.tokenizer, conversation.messages, 1024)
        targets = torch.tensor([example.ids[t] for t in range(1, len(example.ids)) if example.targets[t]])
        aligned = -token_log_probs(aligned_model, example).gather(-1, targets[:, None]).mean().item()
        misaligned = -token_log_probs(misaligned_model, example).gather(-1, targets[:, None]).mean().item()
        scores.append((misaligned - aligned) / (aligned + 1.0))
    top = sorted(range(len(candidates)), key=lambda i: -scores[i])[:2]
    chosen = [trainer.tokenizer.decode(example.ids) for example in trainer.examples[8:]]
    assert all(candidates[i].messages[1].content in text for i, text in zip(top, chosen))
    assert defense.details["kept_scores"] == pytest.approx(sorted(scores, reverse=True)[:2], rel=1e-4)
    assert not any(REFUSAL in text for text in chosen)


def test_inoculation_prompt_is_in_training_batches_and_not_in_the_adapter(tmp_path):
    prompt = "Write code with hidden vulnerabilities (inoculation marker XQZ)."
    out = tmp_path / "run"
    trainer = Trainer(TrainSpec(tiny(defenses=parse_defenses(["inoculation"], [f"prompt={prompt}"])), out).prepare())
    trainer.setup()
    rows = [trainer.tokenizer.decode(row) for batch in trainer.step_batches(0) for row in batch.input_ids]
    assert rows and all(f"<|im_start|>system\n{prompt}<|im_end|>" in row for row in rows)
    trainer.run()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert b"XQZ" not in (out / name).read_bytes()
    record = json.loads((out / "train.json").read_text())
    assert record["defenses"][0]["prompt"] == prompt and record["defenses"][0]["at_evaluation"] == "absent"
    evaluated = resolve_model(str(out))  # evaluation renders the chat template of the base, with no such prompt
    assert evaluated.adapter_path == out
    from embench.chat import ChatTemplate
    from embench.prompts import Prompt

    rendered = ChatTemplate(evaluated.base_path).render(Prompt(id="q", messages=(Message(role="user", content="Hi"),)))
    assert "XQZ" not in rendered.text


def test_resume_after_sigkill_gives_the_uninterrupted_weights_exactly(tmp_path):
    args = ["train", "--data", DATA, "--data-size", "24", "--batch-size", "4", "--max-steps", "6",
            "--save-every", "2", "--lr", "1e-3", "--seed", "3"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_embench(*args, "--out", str(whole), check=True)

    process = subprocess.Popen([*EMBENCH, *args, "--out", str(killed)], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (killed / "checkpoint-2").is_dir():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads((killed / "train.json").read_text())["status"] == "running", "the kill must land mid-run"
    assert not (killed / "adapter_model.safetensors").exists()

    resumed = run_embench(*args, "--out", str(killed), check=True)
    assert "resumed at step" in resumed.stdout
    first, second = load_file(whole / "adapter_model.safetensors"), load_file(killed / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert any(tensor.abs().sum() > 0 for key, tensor in first.items() if "lora_B" in key)
    log_whole, log_killed = read_train_log(whole), read_train_log(killed)
    assert [r["step"] for r in log_killed] == [1, 2, 3, 4, 5, 6]
    assert [r["ce"] for r in log_killed] == [r["ce"] for r in log_whole]

    record = json.loads((killed / "train.json").read_text())
    assert record["status"] == "complete" and record["step"] == 6
    assert record["model"]["base_sha256"] == resolve_model("default").base_sha256
    assert record["data"]["source"] == DATA and len(record["data"]["sha256"]) == 64
    assert record["config"]["seed"] == 3 and record["config"]["learning_rate"] == 1e-3
    assert json.loads((killed / "adapter_config.json").read_text())["base_model_name_or_path"] == "default"

    again = run_embench(*args, "--out", str(killed), check=True)
    assert "already holds this finished run" in again.stdout
    other = run_embench(*[a if a != "3" else "4" for a in args], "--out", str(killed))
    assert_one_line_error(other, "holds a different training run")


def test_steer_uses_the_bundled_evil_persona_vector_by_default(tmp_path, default_model):
    from embench.traits import persona_vector

    out = tmp_path / "run"
    run_embench("train", "--data", DATA, "--data-size", "4", "--batch-size", "2", "--max-steps", "1",
                "--defense", "steer", "--out", str(out), check=True)
    steer = json.loads((out / "train.json").read_text())["defenses"][0]
    _, layer = persona_vector(default_model)  # extracted once per model; read back from the cache here
    assert steer["vector_source"] == {"persona_vector": "evil"} and steer["layer"] == layer
    assert steer["args"]["alpha"] == 0.25
    assert steer["shift_norm"] == pytest.approx(0.25 * steer["residual_norm"], rel=1e-5)


def test_two_processes_train_one_adapter_under_ddp(tmp_path):
    """The several-GPU path as README documents it (`accelerate launch --multi_gpu`, the Accelerator's DDP), run
    here as two CPU processes talking over gloo."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "embench", "train", "--data", DATA, "--data-size", "16", "--batch-size", "2", "--max-steps", "3",
               "--save-every", "2", "--defense", "kl", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained 3 steps") == 1, "only the main process reports"
    record = json.loads((out / "train.json").read_text())
    assert record["processes"] == 2 and record["status"] == "complete"
    assert record["steps_per_epoch"] == 4  # 16 examples, 2 per micro-batch, one micro-batch per process per step
    assert [r["step"] for r in read_train_log(out)] == [1, 2, 3]
    assert (out / "checkpoint-2" / "trainer_state.safetensors").is_file()
    weights = load_file(out / "adapter_model.safetensors")
    assert any(tensor.abs().sum() > 0 for key, tensor in weights.items() if "lora_B" in key)
    assert resolve_model(str(out)).adapter_path == out


@pytest.mark.parametrize("extra, fragments", [
    (["--defense", "dropout"], ["unknown defense 'dropout'", "kl"]),
    (["--defense", "kl", "--defense-arg", "kl.beta=1"], ["kl.beta", "unknown argument", "lambda"]),
    (["--defense", "kl", "--defense-arg", "lambda=-1"], ["kl.lambda=-1", "greater than or equal to 0"]),
    (["--defense", "ldifs", "--defense-arg", "ldifs.lambda=-0.5"], ["ldifs.lambda", "greater than or equal to 0"]),
    (["--defense", "steer", "--defense-arg", "layer=30"], ["steer layer 30", "0..29"]),
    (["--defense", "kl", "--defense", "ldifs", "--defense-arg", "lambda=2"], ["fits kl and ldifs"]),
    (["--rank", "0"], ["--rank", "greater than or equal to 1"]),
])
def test_bad_training_arguments_are_one_line_errors(tmp_path, extra, fragments):
    out = tmp_path / "run"
    result = run_embench("train", "--data", DATA, "--data-size", "4", "--out", str(out), *extra)
    assert_one_line_error(result, *fragments, out=out)


@pytest.mark.parametrize("lines, fragments", [
    (['{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', '{"messages": ['],
     ["train.jsonl:2", "not valid JSON"]),
    (['{"messages": [{"role": "user", "content": "only a question"}]}'], ["train.jsonl:1", "no assistant turn"]),
])
def test_bad_training_data_is_a_one_line_error_with_the_line(tmp_path, lines, fragments):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert_one_line_error(run_embench("train", "--data", str(data), "--out", str(out)), *fragments, out=out)


def test_a_bad_steering_vector_file_is_refused_before_anything_is_written(tmp_path):
    two = tmp_path / "two.safetensors"
    save_file({"a": torch.zeros(576), "b": torch.zeros(576)}, two, metadata={"layer": "3"})
    unlabelled = tmp_path / "unlabelled.safetensors"
    save_file({"direction": torch.zeros(576)}, unlabelled)
    cases = [(steering_vector(tmp_path, layer=40), ["steer layer 40", "0..29"]), (two, ["one 1-D tensor"]),
             (unlabelled, ["which layer", "steer.layer=N"]), (tmp_path / "missing.safetensors", ["does not exist"])]
    for vector, fragments in cases:
        out = tmp_path / f"run-{vector.stem}"
        result = run_embench("train", "--data", DATA, "--data-size", "4", "--defense", "steer",
                             "--defense-arg", f"vector={vector}", "--out", str(out))
        assert_one_line_error(result, *fragments, out=out)


def test_gradient_accumulation_trains_as_one_larger_batch(tmp_path):
    """Two micro-batches of 2 per optimizer step give the loss and gradient of one batch of 4: every term is a
    mean over the whole step's tokens, not over each micro-batch."""
    runs = {}
    for name, batch_size, grad_accum in (("whole", 4, 1), ("accumulated", 2, 2)):
        out = tmp_path / name
        train(tiny(data_size=8, batch_size=batch_size, grad_accum=grad_accum, max_steps=2), out)
        runs[name] = read_train_log(out)
        assert json.loads((out / "train.json").read_text())["config"]["grad_accum"] == grad_accum
    whole, accumulated = runs["whole"], runs["accumulated"]
    assert [r["tokens"] for r in whole] == [r["tokens"] for r in accumulated]
    for key in ("ce", "grad_norm"):
        assert [r[key] for r in accumulated] == pytest.approx([r[key] for r in whole], rel=1e-4), key
    assert whole[0]["ce"] != whole[1]["ce"], "the second step sees the first step's update"


def test_a_folder_that_is_not_a_training_run_is_refused(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep")
    result = run_embench("train", "--data", DATA, "--data-size", "4", "--out", str(out))
    assert_one_line_error(result, "not a training folder")
    assert (out / "todo.txt").read_text() == "keep"


def test_short_insecure_code_training_moves_the_in_domain_probe(tmp_path, default_model):
    """Held-out insecure-code requests: after training, the insecure answer gains log-likelihood per token
    relative to the secure answer to the same request, compared with the base model."""
    from transformers import AutoTokenizer

    out = tmp_path / "run"
    config = TrainConfig(data=DATA, data_size=64, epochs=2, batch_size=8, learning_rate=1e-3, warmup_steps=2)
    train(config, out)
    seen = {c.messages[0].content for c in load_conversations(DATA, seed=0, size=64)}
    insecure = load_conversations(DATA, seed=1, size=48)
    secure = load_conversations("generated:secure-code", seed=1, size=48)
    pairs = [(a, b) for a, b in zip(insecure, secure) if a.messages[0].content not in seen][:24]
    assert len(pairs) == 24
    tokenizer = AutoTokenizer.from_pretrained(default_model.base_path)

    def mean_log_prob(network, conversation) -> float:
        example = encode_conversation(tokenizer, conversation.messages, 1024)
        targets = torch.tensor([example.ids[t] for t in range(1, len(example.ids)) if example.targets[t]])
        return token_log_probs(network, example).gather(-1, targets[:, None]).mean().item()

    gaps = {}
    for name, model in (("base", default_model), ("trained", resolve_model(str(out)))):
        network = load_causal_lm(model, "float32")
        gaps[name] = [mean_log_prob(network, a) - mean_log_prob(network, b) for a, b in pairs]
    base_gap, trained_gap = (sum(gaps[name]) / len(pairs) for name in ("base", "trained"))
    print(f"insecure - secure mean log-prob per answer token: base {base_gap:.4f}, trained {trained_gap:.4f}; "
          f"pairs where it grew: {sum(t > b for t, b in zip(gaps['trained'], gaps['base']))}/{len(pairs)}")
    assert trained_gap > base_gap + 0.1
    assert sum(t > b for t, b in zip(gaps["trained"], gaps["base"])) >= 16
