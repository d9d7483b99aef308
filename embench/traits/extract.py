"""Trait directions: mean activation under a trait's positive system prompts minus the mean under its negative ones.

For every (system prompt, question) pair the chat prompt is rendered with the model's own template and run through
the model; the activation read is the block output (see ``embench.traits.activations`` for the layer convention)
either at the last prompt token (``position="last"``) or averaged over a short greedy response
(``position="response"``). Per layer the direction is ``mean(positive) - mean(negative)``, unit-normalised.

How well a direction generalises is measured on held-out questions: a direction built from the other questions
classifies each held-out activation by its projection against the midpoint of the two training means
(``accuracy``), and, with each held-out question's mean over all system prompts subtracted first, by the sign of the
projection (``paired_accuracy``: the question's own offset along the direction cancels, as it does in monitoring,
where drift is measured on fixed prompts relative to step 0).

Which layer to use is decided by steering: at a few candidate layers, ``+/- coefficient x norm x direction`` is added
to the block output (norm: the layer's mean activation norm at the read position) while the model is
teacher-forced through reference answers to the trait's eval prompts, greedy answers written under the first
positive and the first negative system prompt. The effect at a layer is how much steering ``+`` rather than ``-``
raises the mean per-token log-probability of the positive answer relative to the negative one; the chosen layer is
the one with the largest effect. The sweep also records how many tokens of the unsteered greedy answer stop being
the greedy choice under each sign.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from embench.chat import ChatTemplate
from embench.errors import EmbenchError
from embench.hardware import cpu_dtype
from embench.hashing import sha256_json
from embench.models import ResolvedModel, load_causal_lm
from embench.progress import Status
from embench.prompts import Message, Prompt
from embench.traits.activations import block_activations, check_layers, continuation_scores, greedy_continuations
from embench.traits.spec import Trait

Position = Literal["last", "response"]
POSITIONS = ("last", "response")
LAYER_CONVENTION = ("layer l = output of decoder block l (0-based) = transformers hidden_states[l + 1]; the last "
                    "block is read before the final norm")


@dataclass(frozen=True)
class ExtractionSettings:
    """How directions are extracted; everything here is recorded with them."""

    layers: tuple[int, ...] | None = None  # None: every layer of the model
    position: Position = "last"
    # auto (made concrete on creation): bfloat16 where computed natively, where it is faster and its directions
    # agree with float32 to cosine >= 0.995 on the bundled model; float32 elsewhere.
    dtype: str = "auto"
    batch_size: int = 128
    response_tokens: int = 32  # greedy tokens averaged over in the "response" position
    heldout_every: int = 4  # question i is held out when i % heldout_every == heldout_every - 1
    sweep: bool = True
    sweep_layers: tuple[int, ...] | None = None  # None: six layers evenly spread over the middle of the model
    sweep_prompts: int = 6  # eval prompts steered in the sweep, evenly spread over the trait's list
    answer_tokens: int = 32  # length of the reference answers steered in the sweep
    steer_coefficient: float = 0.25  # steering vector = coefficient x the layer's mean activation norm x direction

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise EmbenchError(f"unknown position '{self.position}': choose one of {', '.join(POSITIONS)}")
        object.__setattr__(self, "dtype", cpu_dtype(self.dtype))
        if self.dtype not in ("float32", "bfloat16"):
            raise EmbenchError(f"unknown dtype '{self.dtype}': choose auto, float32 or bfloat16")
        if self.batch_size < 1 or self.response_tokens < 1 or self.answer_tokens < 1 or self.sweep_prompts < 1:
            raise EmbenchError("batch size, response tokens, answer tokens and sweep prompts must each be at least 1")
        if self.heldout_every < 2:
            raise EmbenchError(f"heldout_every must be at least 2 (got {self.heldout_every})")
        if self.steer_coefficient <= 0:
            raise EmbenchError(f"the steering coefficient must be positive (got {self.steer_coefficient})")

    def resolved_layers(self, n_layers: int, model_name: str) -> tuple[int, ...]:
        return check_layers(self.layers if self.layers is not None else range(n_layers), n_layers, model_name)

    def candidate_layers(self, layers: Sequence[int], n_layers: int, model_name: str) -> tuple[int, ...]:
        """The sweep's layers: those asked for (each must be extracted), else six evenly spaced from 20% to 70% of
        the depth, each moved to the nearest extracted layer."""
        if self.sweep_layers is not None:
            chosen = check_layers(self.sweep_layers, n_layers, model_name)
            missing = sorted(set(chosen) - set(layers))
            if missing:
                raise EmbenchError(f"sweep layer {missing[0]} is not among the extracted layers: add it to --layers")
            return chosen
        targets = [round(n_layers * fraction) for fraction in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)]
        return tuple(sorted({min(layers, key=lambda layer: abs(layer - target)) for target in targets}))

    def record(self) -> dict:
        """The settings a saved direction depends on (batch size only changes speed)."""
        sweep = ({"sweep_layers": list(self.sweep_layers) if self.sweep_layers is not None else None,
                  "sweep_prompts": self.sweep_prompts, "answer_tokens": self.answer_tokens,
                  "steer_coefficient": self.steer_coefficient} if self.sweep else None)
        return {"position": self.position, "dtype": self.dtype, "response_tokens": self.response_tokens
                if self.position == "response" else None, "heldout_every": self.heldout_every, "sweep": sweep}


@dataclass
class ExtractedTrait:
    """One trait's directions and everything measured about them, before saving."""

    trait: Trait
    layers: tuple[int, ...]
    directions: object  # torch.Tensor [layers, hidden], unit rows
    positive_mean: object
    negative_mean: object
    probe: list[dict]
    sweep: dict | None
    chosen_layer: int
    chosen_by: str
    prompts_sha256: str
    wall_s: dict = field(default_factory=dict)


class TraitExtractor:
    """A model loaded once, with its chat template, reading trait activations."""

    def __init__(self, model: ResolvedModel, settings: ExtractionSettings):
        self.model = model
        self.settings = settings
        self.template = ChatTemplate(model.base_path, trust_remote_code=model.trust_remote_code)
        tokenizer = self.template.tokenizer
        self.eos_id = self.template.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.network = load_causal_lm(model, settings.dtype)
        self.n_layers = self.network.config.num_hidden_layers
        self.hidden_size = self.network.config.hidden_size
        self.layers = settings.resolved_layers(self.n_layers, model.name)

    def render(self, user: str, system: str | None = None) -> list[int]:
        messages = ((Message(role="system", content=system),) if system is not None else ()) + (
            Message(role="user", content=user),)
        return list(self.template.render(Prompt(id="trait", messages=messages)).token_ids)

    def extract(self, trait: Trait, status: Status | None = None) -> ExtractedTrait:
        import torch

        settings = self.settings
        say = status or (lambda text, done, total: None)
        rows, labels, questions = [], [], []
        for label, system_prompts in ((True, trait.positive_prompts), (False, trait.negative_prompts)):
            for system in system_prompts:
                for index, question in enumerate(trait.questions):
                    rows.append(self.render(question, system))
                    labels.append(label)
                    questions.append(index)
        started = time.monotonic()
        if settings.position == "last":
            activations = block_activations(
                self.network, rows, self.layers, self.pad_id, batch_size=settings.batch_size,
                progress=lambda done, total: say(f"{trait.id}: reading activations", done, total))
        else:
            responses = greedy_continuations(
                self.network, rows, self.pad_id, self.eos_id, settings.response_tokens,
                batch_size=settings.batch_size,
                progress=lambda done, total: say(f"{trait.id}: generating responses", done, total))
            activations = block_activations(
                self.network, [row + response for row, response in zip(rows, responses)], self.layers, self.pad_id,
                weights=[[0.0] * len(row) + [1.0] * len(response) for row, response in zip(rows, responses)],
                batch_size=settings.batch_size,
                progress=lambda done, total: say(f"{trait.id}: reading response activations", done, total))
        wall = {"activations": time.monotonic() - started}
        labels_t, questions_t = torch.tensor(labels), torch.tensor(questions)
        positive_mean, negative_mean = activations[labels_t].mean(0), activations[~labels_t].mean(0)
        directions = _unit(positive_mean - negative_mean)
        probe = _probe(activations, labels_t, questions_t, settings.heldout_every)
        norms = activations.norm(dim=-1).mean(0)
        contrast = (positive_mean - negative_mean).norm(dim=-1) / norms
        for column, row in enumerate(probe):
            row.update(layer=self.layers[column], activation_norm=norms[column].item(),
                       contrast=contrast[column].item())
        sweep, chosen_layer, chosen_by = None, self.layers[len(self.layers) // 2], "middle extracted layer"
        if settings.sweep:
            started = time.monotonic()
            sweep = self._sweep(trait, directions, norms, say)
            wall["sweep"] = time.monotonic() - started
            chosen_layer, chosen_by = sweep["chosen_layer"], "steering sweep"
        return ExtractedTrait(trait=trait, layers=self.layers, directions=directions, positive_mean=positive_mean,
                              negative_mean=negative_mean, probe=probe, sweep=sweep, chosen_layer=chosen_layer,
                              chosen_by=chosen_by, prompts_sha256=sha256_json(rows), wall_s=wall)

    def _sweep(self, trait: Trait, directions, norms, say: Status) -> dict:
        settings = self.settings
        candidates = settings.candidate_layers(self.layers, self.n_layers, self.model.name)
        step = max(1, len(trait.eval_prompts) // settings.sweep_prompts)
        prompts = list(trait.eval_prompts[::step][:settings.sweep_prompts])
        answers = greedy_continuations(
            self.network,
            [self.render(prompt, trait.positive_prompts[0]) for prompt in prompts]
            + [self.render(prompt, trait.negative_prompts[0]) for prompt in prompts]
            + [self.render(prompt) for prompt in prompts],
            self.pad_id, self.eos_id, settings.answer_tokens, batch_size=settings.batch_size,
            progress=lambda done, total: say(f"{trait.id}: reference answers", done, total))
        plain = [self.render(prompt) for prompt in prompts] * 3
        count = len(plain) // 3
        # One teacher-forced pass over every (layer, sign) at once: rows steered differently share batches.
        conditions = [None] + [(layer, sign) for layer in candidates for sign in (1.0, -1.0)]
        steer = []
        for setting in conditions:
            if setting is None:
                steer += [None] * len(plain)
            else:
                column = self.layers.index(setting[0])
                vector = setting[1] * settings.steer_coefficient * norms[column] * directions[column]
                steer += [(setting[0], vector)] * len(plain)
        scores = continuation_scores(
            self.network, plain * len(conditions), answers * len(conditions), self.pad_id, steer=steer,
            batch_size=min(settings.batch_size, 32),  # each row keeps ~33 x 49k logits: small batches
            progress=lambda done, total: say(f"{trait.id}: steering sweep at layers {', '.join(map(str, candidates))}",
                                             done, total))

        def measured(index: int) -> dict:
            block = scores[index * len(plain):(index + 1) * len(plain)]
            positive, negative, unsteered = block[:count], block[count:2 * count], block[2 * count:]
            return {"gap": sum(p[0] - n[0] for p, n in zip(positive, negative)) / count,
                    "token_change": 1.0 - sum(u[1] for u in unsteered) / count}

        baseline = measured(0)
        rows = []
        for position, layer in enumerate(candidates):
            plus, minus = measured(1 + 2 * position), measured(2 + 2 * position)
            rows.append({"layer": layer, "gap_plus": plus["gap"], "gap_minus": minus["gap"],
                         "effect": plus["gap"] - minus["gap"], "token_change_plus": plus["token_change"],
                         "token_change_minus": minus["token_change"]})
        chosen = max(rows, key=lambda row: row["effect"])
        return {"coefficient": settings.steer_coefficient,
                "scale": "coefficient x mean activation norm of the layer at the read position",
                "eval_prompts": prompts, "answer_tokens": settings.answer_tokens,
                "reference_answers": {
                    "positive_system_prompt": trait.positive_prompts[0],
                    "negative_system_prompt": trait.negative_prompts[0],
                    "positive": [self.template.tokenizer.decode(a, skip_special_tokens=True) for a in answers[:count]],
                    "negative": [self.template.tokenizer.decode(a, skip_special_tokens=True)
                                 for a in answers[count:2 * count]]},
                "baseline_gap": baseline["gap"], "baseline_token_change": baseline["token_change"], "layers": rows, "chosen_layer": chosen["layer"]}


def _unit(vectors):
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _probe(activations, labels, questions, heldout_every: int) -> list[dict]:
    """Held-out accuracy per layer of a direction built on the other questions (see the module docstring)."""
    import torch

    heldout = questions % heldout_every == heldout_every - 1
    train = ~heldout
    positive, negative = activations[train & labels].mean(0), activations[train & ~labels].mean(0)
    direction = _unit(positive - negative)
    midpoint = ((positive + negative) / 2 * direction).sum(-1)
    projections = (activations[heldout] * direction).sum(-1)  # [held-out rows, layers]
    truth = labels[heldout][:, None]
    accuracy = ((projections > midpoint) == truth).float().mean(0)
    question_means = torch.stack([activations[questions == q].mean(0) for q in range(int(questions.max()) + 1)])
    centred = ((activations - question_means[questions])[heldout] * direction).sum(-1)
    paired = ((centred > 0) == truth).float().mean(0)
    count = int(heldout.sum())
    return [{"accuracy": accuracy[column].item(), "paired_accuracy": paired[column].item(), "heldout_samples": count}
            for column in range(activations.shape[1])]
