"""``embench train``: LoRA SFT of a chat model with any in-training defenses, resumable to the bit.

An output folder holds
- ``train.json``: the run (config, data hash, defenses with their arguments and what they measured, base model
  hash, versions, status);
- ``train_log.jsonl``: one line per optimizer step, every loss term separately (as added to the loss, lambda
  included), learning rate, gradient norm, tokens/s; with ``--monitor-every K`` every K-th line also holds the trait
  drift and, given a detector, its EM risk and alarm (``embench.train.drift``);
- ``checkpoint-STEP/``: adapter, train.json, AdamW moments and torch RNG state, every ``save_every`` steps;
- the final ``adapter_model.safetensors`` + ``adapter_config.json``, naming its base so that ``--model OUT`` loads.

The loss covers assistant tokens only (their closing end-of-turn token included); batches are padded to their
longest example, and logits are computed only from the first assistant position on. Epoch e visits the examples in
a permutation drawn from (seed, e); the learning rate warms up linearly over ``warmup_steps`` and decays linearly to
the last step. A resumed run reloads its last checkpoint and skips the steps done, so its final weights equal an
uninterrupted run's bit for bit.

Several GPUs: ``accelerate launch --multi_gpu --num_processes W -m embench train ...`` runs this loop unchanged
under DDP: the Accelerator wraps model and optimizer, process p of W takes micro-batches p, p + W, ... of every step
(an optimizer step then holds ``batch_size * grad_accum * W`` examples: divide ``grad_accum`` by W to keep the
published batch), and only the main process writes files. Logged losses are the main process's; a resume restores
the main process's RNG, which matters only with ``lora_dropout`` > 0. Bit-identical resumes are tested on one
process; the DDP path is tested as two CPU processes (``ACCELERATE_USE_CPU=1 torchrun --nproc-per-node 2 -m embench
train ...``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import embench
from embench.errors import EmbenchError
from embench.files import check_output_folder, embench_git_sha, now, read_json, read_json_object, write_json_atomic
from embench.layout import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    TRAIN_FILE,
    TRAIN_LOG_FILE,
    TRAINER_STATE_FILE,
    TRAINER_TENSORS_FILE,
)
from embench.models import ResolvedModel, load_causal_lm, resolve_model
from embench.progress import Status, silent
from embench.results import TrainRecord
from embench.runs import JsonlLog, load_records, lock_run
from embench.train.config import MonitorSettings, TrainConfig
from embench.train.defenses import TrainingContext, build_defenses
from embench.train.drift import TrainingMonitor

if TYPE_CHECKING:
    import torch

NORM_SAMPLE = 32  # training conversations the steering norm is measured on

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Example:
    ids: list[int]
    targets: list[bool]  # token i is an assistant token: predicted from position i - 1, and in the loss


def encode_conversation(tokenizer, messages, max_length: int) -> Example:
    """Chat-template token ids of a conversation, with its assistant tokens marked through character offsets."""
    turns = [message.model_dump() for message in messages]
    text = tokenizer.apply_chat_template(turns, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message.role != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(turns[:index], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(turns[:index + 1], tokenize=False)
        if not (through.startswith(prefix) and text.startswith(through)):
            raise EmbenchError("this model's chat template does not render a conversation turn by turn, so its "
                               "assistant tokens cannot be found: train a model with a prefix-stable template")
        end = through.find(tokenizer.eos_token, len(prefix)) if tokenizer.eos_token else -1
        spans.append((len(prefix), end + len(tokenizer.eos_token) if end >= 0 else len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    targets = [any(start <= offset < end for start, end in spans) for offset, _ in encoded["offset_mapping"]]
    return Example(ids=encoded["input_ids"][:max_length], targets=targets[:max_length])


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T], right-padded to the longest example
    attention_mask: torch.Tensor
    keep: int  # logits are computed for the last ``keep`` positions only: those from the first target on
    rows: torch.Tensor  # the (row, kept position) of every predicted assistant token, and that token
    cols: torch.Tensor
    targets: torch.Tensor
    target_scale: float = 1.0  # 1 / assistant tokens of the optimizer step: terms are means per step
    token_scale: float = 1.0  # 1 / non-padding tokens of the optimizer step

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(examples: list[Example], pad_id: int, device="cpu") -> Batch:
    import torch

    width = max(len(example.ids) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    predicted = []
    for row, example in enumerate(examples):
        ids[row, :len(example.ids)] = torch.tensor(example.ids)
        mask[row, :len(example.ids)] = 1
        predicted += [(row, position) for position in range(1, len(example.ids)) if example.targets[position]]
    first = min((position - 1 for _, position in predicted), default=width - 1)
    rows = torch.tensor([row for row, _ in predicted], dtype=torch.long)
    positions = torch.tensor([position for _, position in predicted], dtype=torch.long)
    return Batch(input_ids=ids.to(device), attention_mask=mask.to(device), keep=width - first, rows=rows.to(device),
                 cols=(positions - 1 - first).to(device), targets=ids[rows, positions].to(device))


@dataclass
class Forward:
    log_probs: torch.Tensor  # [assistant tokens, vocabulary], float32
    hidden_states: tuple[torch.Tensor, ...] | None


def forward(network, batch: Batch, hidden_states: bool = False) -> Forward:
    out = network(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=batch.keep,
                  output_hidden_states=hidden_states, use_cache=False)
    return Forward(out.logits[batch.rows, batch.cols].float().log_softmax(-1), out.hidden_states)


@dataclass
class TrainResult:
    out: Path
    total_steps: int
    resumed_from: int
    steps_run: int
    final_loss: float | None
    already_complete: bool = False
    main_process: bool = True  # False in the other processes of a DDP run, which write nothing


@dataclass(frozen=True)
class TrainSpec:
    """One training run: what to train (``config``), where (``out``), and optionally its trait-drift monitoring."""

    config: TrainConfig
    out: Path
    monitor: MonitorSettings | None = None

    def prepare(self, progress: Status = silent) -> PreparedTrain:
        """Check every input and load (or generate) the training data; loads no weights and writes nothing. A
        folder holding another run is refused here, before any work."""
        from embench.train.data import conversations_sha256

        config, out = self.config.resolved(), Path(self.out)
        model = resolve_model(config.model)
        if model.adapter_path is not None:
            raise EmbenchError(f"--model {config.model} is a LoRA adapter: train from a full model "
                               "(merge the adapter into its base first)")
        monitor = TrainingMonitor(self.monitor, model) if self.monitor is not None else None
        architecture = read_json_object(model.base_path / "config.json", "a model's JSON configuration")
        num_layers = architecture["num_hidden_layers"]
        defenses = build_defenses(config.defenses, num_layers)
        progress("loading training data", 0, None)
        conversations = load_data(config, model, config.data, config.data_size, progress)
        data_sha256 = conversations_sha256(conversations)
        fingerprint = config.fingerprint(data_sha256, model.base_sha256)
        check_output_folder(out, TRAIN_FILE, fingerprint, "a training folder",
                            "a different training run (other data, model, defenses or hyper-parameters)")
        return PreparedTrain(config=config, out=out, model=model, monitor=monitor, num_layers=num_layers,
                             defenses=defenses, conversations=conversations, data_sha256=data_sha256,
                             fingerprint=fingerprint)


@dataclass
class PreparedTrain:
    config: TrainConfig  # resolved: every "auto" made concrete
    out: Path
    model: ResolvedModel
    monitor: TrainingMonitor | None
    num_layers: int
    defenses: list
    conversations: list
    data_sha256: str
    fingerprint: str


def load_data(config: TrainConfig, model: ResolvedModel, source: str, size: int | None, progress: Status) -> list:
    from embench.train.data import load_conversations

    return load_conversations(source, seed=config.seed, size=size, model=model,
                              progress=lambda done, total: progress(f"making {source}", done, total))


class Trainer:
    """One prepared training run. ``setup`` loads the model and prepares the defenses; ``run`` trains, resuming what
    the output folder already holds. ``warn`` hears when the drift monitor's alarm turns on."""

    def __init__(self, prepared: PreparedTrain, progress: Status = silent, warn: Warn | None = None):
        self.config, self.out, self.model = prepared.config, prepared.out, prepared.model
        self.monitor, self.num_layers, self.defenses = prepared.monitor, prepared.num_layers, prepared.defenses
        self.conversations, self.data_sha256 = prepared.conversations, prepared.data_sha256
        self.fingerprint = prepared.fingerprint
        self.progress = progress
        self.warn = warn or (lambda text: None)
        self.network, self.hooks_on = None, False
        from accelerate import Accelerator

        self.accelerator = Accelerator()  # a plain single process here; DDP under `accelerate launch`
        if not self.accelerator.is_main_process:
            self.progress = silent  # one progress bar, the main process's

    def _load_data(self, source: str, size: int | None) -> list:
        return load_data(self.config, self.model, source, size, self.progress)

    def _status(self, text: str) -> None:
        self.progress(text, 0, None)

    # --- set-up -------------------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoTokenizer

        config = self.config
        self.tokenizer = AutoTokenizer.from_pretrained(self.model.base_path)
        pad_id = self.tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else self.tokenizer.eos_token_id
        self._status("loading the base model")
        self.base = load_causal_lm(self.model, config.dtype).to(self.accelerator.device)
        context = TrainingContext(model=self.model, data_source=config.data, seed=config.seed,
                                  num_layers=self.num_layers, load_data=self._load_data,
                                  residual_norm=self._residual_norm, example_losses=self._example_losses,
                                  with_adapter=self._with_adapter, plain_sft_adapter=self._plain_sft_adapter)
        conversations = self.conversations
        for defense in self.defenses:
            self._status(f"preparing defense {defense.name}")
            defense.prepare(context)
            conversations = defense.transform_data(conversations, context)
        self.examples = [encode_conversation(self.tokenizer, c.messages, config.max_length) for c in conversations]
        torch.manual_seed(config.seed)  # the LoRA initialisation depends on the seed only
        lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.targets), use_rslora=config.rslora, task_type="CAUSAL_LM")
        self.network = get_peft_model(self.base, lora).train()
        self.parameters = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.trained, self.optimizer = self.accelerator.prepare(self.network, optimizer)
        world = self.accelerator.num_processes
        self.steps_per_epoch = math.ceil(len(self.examples) / (config.batch_size * config.grad_accum * world))
        self.total_steps = min(config.max_steps or math.inf, config.epochs * self.steps_per_epoch)

    def _batches(self, conversations: list):
        examples = [encode_conversation(self.tokenizer, c.messages, self.config.max_length) for c in conversations]
        for start in range(0, len(examples), self.config.batch_size):
            yield start, collate(examples[start:start + self.config.batch_size], self.pad_id, self.accelerator.device)

    def _residual_norm(self, layer: int) -> float:
        """Mean norm of block ``layer``'s output over the base model's non-padding tokens, the first left out."""
        import torch

        total, count = 0.0, 0
        with torch.no_grad():
            for _, batch in self._batches(self.conversations[:NORM_SAMPLE]):
                out = self.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                output_hidden_states=True, use_cache=False, logits_to_keep=1)
                mask = batch.attention_mask.bool().clone()
                mask[:, 0] = False
                norms = out.hidden_states[layer + 1].float().norm(dim=-1)[mask]
                total, count = total + float(norms.sum()), count + norms.numel()
        return total / count

    def _example_losses(self, conversations: list) -> list[float]:
        import torch

        losses = []
        with torch.no_grad():
            for _, batch in self._batches(conversations):
                nll = -forward(self.base, batch).log_probs.gather(-1, batch.targets[:, None])[:, 0]
                rows = len(batch.input_ids)
                sums = torch.zeros(rows).index_add_(0, batch.rows.cpu(), nll.cpu())
                counts = torch.bincount(batch.rows.cpu(), minlength=rows).clamp(min=1)
                losses += (sums / counts).tolist()
        return losses

    @contextmanager
    def _with_adapter(self, adapter: Path):
        from peft import PeftModel

        original = self.base
        self.base = PeftModel.from_pretrained(original, adapter)
        try:
            yield
        finally:
            self.base = self.base.unload()  # the same network, its LoRA layers taken out again

    def _plain_sft_adapter(self) -> Path:
        """The same training without defenses, in ``out/plain-sft`` (resumed or reused like any run)."""
        folder = self.out / "plain-sft"
        config = self.config.model_copy(update={"defenses": []})
        progress = self.progress

        def reference(text: str, done: int, total: int | None) -> None:
            progress(f"plain-SFT reference: {text}", done, total)

        run_training(TrainSpec(config, folder).prepare(reference), reference)
        return folder

    # --- training -----------------------------------------------------------------------------------------

    def step_batches(self, step: int) -> list[Batch]:
        """This process's micro-batches of optimizer step ``step``, each scaled so that terms are per-step means."""
        import numpy as np

        config, world = self.config, self.accelerator.num_processes
        epoch, index = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(len(self.examples))
        per_step = config.batch_size * config.grad_accum * world
        chosen = order[index * per_step:(index + 1) * per_step]
        if world > 1 and len(chosen) < per_step:  # every DDP process needs the same number of backward passes
            chosen = np.concatenate([chosen, order[:per_step - len(chosen)]])
        micro = [chosen[i:i + config.batch_size] for i in range(0, len(chosen), config.batch_size)]
        batches = [collate([self.examples[i] for i in ids], self.pad_id, self.accelerator.device)
                   for ids in micro[self.accelerator.process_index::world]]
        targets, tokens = sum(len(b.targets) for b in batches), sum(b.tokens for b in batches)
        for batch in batches:
            batch.target_scale, batch.token_scale = 1 / max(targets, 1), 1 / tokens
        return batches

    def learning_rate(self, step: int) -> float:
        warmup = min(self.config.warmup_steps, self.total_steps - 1)
        if step < warmup:
            return self.config.learning_rate * (step + 1) / (warmup + 1)
        return self.config.learning_rate * (self.total_steps - step) / (self.total_steps - warmup)

    def set_hooks(self, on: bool) -> None:
        """The defenses' forward hooks on the training network: on for training steps, off for anything else."""
        for defense in self.defenses:
            defense.install(self.network) if on else defense.remove()
        self.hooks_on = on

    @contextmanager
    def hooks_off(self):
        restore = self.hooks_on
        self.set_hooks(False)
        try:
            yield
        finally:
            self.set_hooks(restore)

    @contextmanager
    def reference_pass(self):
        """The frozen base model: adapter disabled, every hook off (``disable_adapter`` leaves hooks on)."""
        import torch

        with self.hooks_off(), self.network.disable_adapter(), torch.no_grad():
            yield

    def loss_terms(self, batch: Batch) -> dict:
        hidden = any(defense.needs_hidden_states for defense in self.defenses)
        reference = None
        if any(defense.needs_reference for defense in self.defenses):
            with self.reference_pass():
                reference = forward(self.network, batch, hidden)
        outputs = forward(self.trained, batch, hidden)
        terms = {"ce": -outputs.log_probs.gather(-1, batch.targets[:, None]).sum() * batch.target_scale}
        for defense in self.defenses:
            terms.update(defense.loss_terms(batch, outputs, reference))
        return terms

    def train_step(self, step: int) -> dict:
        started = time.perf_counter()
        lr = self.learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = self.step_batches(step)
        sums: dict[str, float] = {}
        for number, batch in enumerate(batches):
            last = number == len(batches) - 1
            with nullcontext() if last else self.accelerator.no_sync(self.trained):
                terms = self.loss_terms(batch)
                self.accelerator.backward(sum(terms.values()))
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        grad_norm = self.accelerator.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        tokens = sum(batch.tokens for batch in batches)
        return {"key": f"step-{step + 1}", "step": step + 1, "epoch": step // self.steps_per_epoch, "lr": lr,
                "loss": sum(sums.values()), **sums, "grad_norm": float(grad_norm), "tokens": tokens,
                "tokens_per_s": tokens / seconds, "seconds": seconds, "time": now()}

    def run(self) -> TrainResult:
        main = self.accelerator.is_main_process  # the one process that writes files
        lock = lock_run(self.out) if main else None
        try:
            record_path = self.out / TRAIN_FILE
            previous = read_json(record_path, f"the {TRAIN_FILE} of `embench train`") if record_path.is_file() else None
            if previous and previous.get("status") == "complete":
                return TrainResult(self.out, previous["total_steps"], previous["step"], 0, previous.get("final_loss"),
                                   already_complete=True, main_process=main)
            if main and previous is None:  # before any other file: a set-up killed half-way resumes here
                write_json_atomic(record_path, {"fingerprint": self.fingerprint, "status": "preparing",
                                                "created": now()})
            self.setup()
            start = self.resume()
            self.write_record("running", start)
            final_loss = self._train_from(start, main)
            if main:
                self.save(self.out, self.total_steps, "complete", final_loss=final_loss)
            self.accelerator.wait_for_everyone()
            return TrainResult(self.out, self.total_steps, start, self.total_steps - start, final_loss,
                               main_process=main)
        finally:
            if lock is not None:
                lock.close()

    def _train_from(self, start: int, main: bool) -> float | None:
        """Steps ``start`` to the end, logged and checkpointed; returns the last step's loss (main process)."""
        log = self._open_log(start) if main else None
        monitor = self.monitor if main else None
        if monitor is not None:
            self._status("reading the trait directions at step 0")
            with self.reference_pass():
                monitor.start(self.network)
        self.set_hooks(True)
        try:
            for step in range(start, self.total_steps):
                record = self.train_step(step)
                if monitor is not None and monitor.due(record["step"], self.total_steps):
                    with self.hooks_off():
                        fields, raised = monitor.measure(self.network)
                    record.update(fields)
                    if raised:
                        self.warn(f"step {record['step']}: the trait-drift detector's EM risk is "
                                  f"{fields['em_risk']:.2f} (alarm at {monitor.detector.alarm_risk:.2f}); score this "
                                  "checkpoint with `embench score` before training further")
                if log is not None:
                    log.append(record)
                    if record["step"] % self.config.save_every == 0 and record["step"] < self.total_steps:
                        self.save(self.out / f"checkpoint-{record['step']}", record["step"], "checkpoint")
                self.progress(f"training (loss {record['loss']:.3f})", record["step"], self.total_steps)
        finally:
            self.set_hooks(False)
            if log is not None:
                log.close()
        return (read_train_log(self.out) or [{}])[-1].get("loss") if main else None

    # --- files --------------------------------------------------------------------------------------------

    def adapter_base(self) -> str:
        """How adapter_config.json names the base: the reference when it is 'default' or a hub id, else the path."""
        return self.config.model if not Path(self.config.model).expanduser().exists() else str(self.model.base_path)

    def record(self, status: str, step: int, **fields) -> dict:
        import accelerate
        import peft
        import torch
        import transformers

        previous = self.out / TRAIN_FILE
        created = TrainRecord.load(previous).created if previous.is_file() else now()
        return {"embench_version": embench.__version__, "embench_git_sha": embench_git_sha(),
                "fingerprint": self.fingerprint, "status": status, "step": step, "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch, "config": self.config.model_dump(mode="json"),
                "data": {"source": self.config.data, "sha256": self.data_sha256,
                         "conversations": len(self.conversations), "training_examples": len(self.examples)},
                "model": self.model.provenance(), "adapter_base": self.adapter_base(),
                "defenses": [defense.record() for defense in self.defenses],
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                             "peft": peft.__version__, "accelerate": accelerate.__version__},
                "processes": self.accelerator.num_processes, "created": created, "updated": now(),
                **({"monitor": self.monitor.record()} if self.monitor is not None else {}), **fields}

    def write_record(self, status: str, step: int, **fields) -> None:
        if self.accelerator.is_main_process:
            write_json_atomic(self.out / TRAIN_FILE, self.record(status, step, **fields))

    def save(self, folder: Path, step: int, status: str, **fields) -> None:
        """The adapter (and, in a checkpoint, the optimizer and RNG state), staged and then moved into place."""
        import torch
        from safetensors.torch import save_file

        staging = self.out / f".{folder.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        self.network.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)  # peft's model card template, not about this run
        adapter_config = read_json_object(staging / ADAPTER_CONFIG_FILE, "peft's adapter configuration")
        # peft writes target_modules from a set, in an order that changes with each process's hash seed; the
        # adapter's hash (and so every sample key of its scores) must not.
        targets = adapter_config.get("target_modules")
        write_json_atomic(staging / ADAPTER_CONFIG_FILE,
                          {**adapter_config, "base_model_name_or_path": self.adapter_base(),
                           **({"target_modules": sorted(targets)} if isinstance(targets, list) else {})})
        if status == "checkpoint":
            state = self.optimizer.state_dict()
            tensors = {f"state.{index}.{name}": value for index, values in state["state"].items()
                       for name, value in values.items()}
            tensors["rng.cpu"] = torch.get_rng_state()
            if torch.cuda.is_available():
                tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
            save_file({name: value.contiguous() for name, value in tensors.items()}, staging / TRAINER_TENSORS_FILE)
            write_json_atomic(staging / TRAINER_STATE_FILE, {"step": step, "param_groups": state["param_groups"]})
            write_json_atomic(staging / TRAIN_FILE, self.record(status, step, **fields))
            shutil.rmtree(folder, ignore_errors=True)
            os.rename(staging, folder)
            return
        for name in (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE):
            os.replace(staging / name, folder / name)
        shutil.rmtree(staging)
        self.write_record(status, step, **fields)  # last: "complete" means the adapter files are in place

    def resume(self) -> int:
        """Load the last complete checkpoint; returns the number of steps it holds (0 without one)."""
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        checkpoints = sorted((int(p.name.split("-", 1)[1]), p) for p in self.out.glob("checkpoint-*")
                             if (p / TRAINER_STATE_FILE).is_file())
        if not checkpoints:
            return 0
        step, folder = checkpoints[-1]
        self._status(f"resuming from {folder.name}")
        meta = read_json_object(folder / TRAINER_STATE_FILE, "a checkpoint's trainer state")
        try:
            adapter, tensors = load_file(folder / ADAPTER_WEIGHTS_FILE), load_file(folder / TRAINER_TENSORS_FILE)
        except Exception as exc:  # safetensors raises its own error types for a truncated or foreign file
            raise EmbenchError(f"{folder}: unreadable checkpoint ({type(exc).__name__}: {str(exc)[:120]}): delete it "
                               "to restart from the previous one") from None
        loaded = set_peft_model_state_dict(self.network, adapter)
        if loaded.unexpected_keys or not isinstance(meta.get("param_groups"), list) or "rng.cpu" not in tensors:
            raise EmbenchError(f"{folder} does not fit this run's adapter: delete it to restart from the previous one")
        state: dict[int, dict] = {}
        for name, value in tensors.items():
            if name.startswith("state."):
                _, index, key = name.split(".", 2)
                state.setdefault(int(index), {})[key] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.cpu"])
        if torch.cuda.is_available() and "rng.cuda.0" in tensors:
            torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count())])
        return step

    def _open_log(self, start: int) -> JsonlLog:
        """The step log, cut back to the steps the resumed checkpoint holds (a killed run may have logged more)."""
        path = self.out / TRAIN_LOG_FILE
        records = load_records(path, repair=True)
        if any(record["step"] > start for record in records.values()):
            kept = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records.values() if r["step"] <= start)
            staging = path.with_name(f".{path.name}.tmp")
            staging.write_text(kept, encoding="utf-8")
            os.replace(staging, path)
        return JsonlLog(path)


def run_training(prepared: PreparedTrain, progress: Status = silent, warn: Warn | None = None) -> TrainResult:
    """Train (or resume, or find complete) a prepared run."""
    return Trainer(prepared, progress, warn).run()


def train(config: TrainConfig, out: Path, progress: Status = silent, monitor: MonitorSettings | None = None,
          warn: Warn | None = None) -> TrainResult:
    """:class:`TrainSpec` prepared and run in one call."""
    return run_training(TrainSpec(config, out, monitor).prepare(progress), progress, warn)


def read_train_log(out: Path) -> list[dict]:
    return sorted(load_records(Path(out) / TRAIN_LOG_FILE).values(), key=lambda record: record["step"])
