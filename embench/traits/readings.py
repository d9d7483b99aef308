"""What the monitor measures: a checkpoint's reading of the monitoring prompts, and each trait's value and drift.

The prompt set is the eval prompts of every monitored trait (from the trait files the directions were extracted
from), deduplicated, each asked with no system prompt. A checkpoint's *reading* is, at each monitored layer, the mean
block output at the last prompt token over that set and the mean norm of those activations (one batched forward
pass, stopped after the deepest monitored layer; layer convention as in ``embench.traits.activations``). A trait's
*value* is the reading's mean projected on the trait's unit direction at its layer (the chosen layer of its steering
sweep, or ``layer``), divided by step 0's mean activation norm at that layer; its *drift* is the value minus step
0's, so step 0 (the base model, no adapter) drifts exactly zero. Every trait is read on the same prompts, so the
drifts of all traits form one comparable drift vector per checkpoint.

Readings are cached in ``$EMBENCH_HOME/monitor/``, keyed by the weights (base and adapter hashes), the prompt token
ids, the layers and the dtype: re-running, or adding checkpoints, measures only what is new.

``trait_drift`` measures a live network (e.g. every K training steps) against a step-0 reading in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embench.chat import ChatTemplate
from embench.errors import EmbenchError
from embench.files import write_atomic
from embench.hashing import sha256_json
from embench.home import embench_home
from embench.models import ResolvedModel
from embench.traits.activations import block_activations, check_layers
from embench.traits.spec import Trait, load_trait_file, traits_dir
from embench.traits.store import load_directions

READING_FORMAT = 1


@dataclass(frozen=True)
class MonitoredTrait:
    id: str
    kind: str  # alignment | control | persona
    layer: int
    direction: np.ndarray  # unit, float64 [hidden]
    record: dict  # what the direction is: trait and tensors hashes, layer


@dataclass(frozen=True)
class Reading:
    """A checkpoint's mean last-token activation and mean activation norm over the prompt set, per monitored layer."""

    means: np.ndarray  # float64 [layers, hidden]
    norms: np.ndarray  # float64 [layers]


@dataclass(frozen=True)
class TraitSet:
    """Trait directions of one base model and the prompts they are read on."""

    folder: Path
    model: ResolvedModel
    traits: tuple[MonitoredTrait, ...]
    prompts: tuple[str, ...]
    rows: tuple[tuple[int, ...], ...]  # the prompts rendered with the model's chat template
    pad_id: int

    @property
    def ids(self) -> list[str]:
        return [trait.id for trait in self.traits]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({trait.layer for trait in self.traits}))

    @property
    def prompts_sha256(self) -> str:
        return sha256_json([list(row) for row in self.rows])

    @property
    def sha256(self) -> str:
        """The traits hash: directions, layers and prompts."""
        return sha256_json({"traits": [trait.record for trait in self.traits], "prompts_sha256": self.prompts_sha256})

    def directions(self) -> np.ndarray:
        return np.stack([trait.direction for trait in self.traits])

    def random_directions(self, seed: int) -> np.ndarray:
        """One seeded random unit direction per trait (read at that trait's layer)."""
        draws = np.random.default_rng(seed).standard_normal((len(self.traits), self.traits[0].direction.shape[0]))
        return draws / np.linalg.norm(draws, axis=1, keepdims=True)

    def _columns(self) -> list[int]:
        return [self.layers.index(trait.layer) for trait in self.traits]

    def values(self, reading: Reading, reference: Reading, directions: np.ndarray | None = None) -> np.ndarray:
        """Per trait: mean projection on its direction over the step-0 mean activation norm at its layer."""
        columns = self._columns()
        directions = self.directions() if directions is None else directions
        return (reading.means[columns] * directions).sum(-1) / reference.norms[columns]

    def drift(self, reading: Reading, reference: Reading, directions: np.ndarray | None = None) -> np.ndarray:
        """``values(reading) - values(reference)``, computed from the difference of the means: exactly zero for the
        reference itself."""
        columns = self._columns()
        directions = self.directions() if directions is None else directions
        return ((reading.means[columns] - reference.means[columns]) * directions).sum(-1) / reference.norms[columns]


def _definition(metadata: dict) -> Trait:
    """The trait file the directions were extracted from (its eval prompts are the monitoring prompts): the file
    recorded in the metadata, else the shipped trait of that id, whichever has the recorded content hash."""
    recorded = metadata["trait"]
    candidates = ([Path(recorded["file"])] if recorded.get("file") else []) + [traits_dir() / f"{recorded['id']}.yaml"]
    for path in candidates:
        if path.is_file():
            trait = load_trait_file(path)
            if trait.sha256 == recorded["sha256"]:
                return trait
    raise EmbenchError(f"the definition of trait '{recorded['id']}' its directions were extracted from (content "
                       f"sha256 {recorded['sha256'][:12]}) is neither at {recorded.get('file')} nor among the shipped "
                       "traits, and its eval prompts are the monitoring prompts: restore that file or re-extract")


def load_trait_set(folder: Path, model: ResolvedModel, traits: Sequence[str] | None = None,
                   layer: int | None = None) -> TraitSet:
    """The directions of ``folder`` (every trait, or those named), checked to come from ``model`` (a base model,
    no adapter), each at its chosen layer or at ``layer``, with the monitoring prompts rendered for the model."""
    directions = load_directions(Path(folder), model, list(traits) if traits else None)
    template = ChatTemplate(model.base_path, trust_remote_code=model.trust_remote_code)
    recorded = next(iter(directions.values())).metadata["model"]
    if recorded["chat_template_sha256"] != template.sha256:
        raise EmbenchError(f"{folder} was extracted with another chat template than {model.base_path} holds now: "
                           "re-extract the traits")
    if layer is not None:
        check_layers([layer], recorded["n_layers"], model.name)
    monitored, prompts = [], {}
    for trait_id, saved in directions.items():
        at = saved.chosen_layer if layer is None else layer
        check_layers([at], recorded["n_layers"], model.name)
        direction = saved.direction(at).double().numpy()
        for prompt in _definition(saved.metadata).eval_prompts:
            prompts.setdefault(prompt, None)
        monitored.append(MonitoredTrait(
            id=trait_id, kind=saved.metadata["trait"]["kind"], layer=at, direction=direction,
            record={"id": trait_id, "kind": saved.metadata["trait"]["kind"], "layer": at,
                    "chosen_layer": saved.chosen_layer, "position": saved.metadata["extraction"]["position"],
                    "trait_sha256": saved.metadata["trait"]["sha256"],
                    "tensors_sha256": saved.metadata["tensors"]["sha256"]}))
    tokenizer = template.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else template.eos_token_id
    return TraitSet(folder=Path(folder), model=model, traits=tuple(monitored), prompts=tuple(prompts),
                    rows=tuple(tuple(template.user_turn_ids(prompt)) for prompt in prompts), pad_id=pad_id)


def read_layers(network, trait_set: TraitSet, batch_size: int = 64) -> Reading:
    """One batched pass over the prompt set, in eval mode (the network's mode is restored afterwards)."""
    was_training = network.training
    network.eval()
    try:
        activations = block_activations(network, trait_set.rows, trait_set.layers, trait_set.pad_id,
                                        batch_size=batch_size).double()
    finally:
        network.train(was_training)
    return Reading(means=activations.mean(0).numpy(), norms=activations.norm(dim=-1).mean(0).numpy())


def trait_drift(network, trait_set: TraitSet, reference: Reading, batch_size: int = 64) -> dict[str, float]:
    """Per-trait drift of a live network (a peft model during training, say) from a step-0 reading.

    ``reference`` is ``read_layers`` of the base model, or of the peft model before its first optimizer step (a
    fresh LoRA adds exactly zero). The network is measured as it runs, forward hooks included: take steering hooks
    off first. Costs one forward pass over the prompt set (``bench/monitor.py``: seconds per checkpoint)."""
    drift = trait_set.drift(read_layers(network, trait_set, batch_size), reference)
    return dict(zip(trait_set.ids, drift.tolist()))


def reading_path(model: ResolvedModel, trait_set: TraitSet, dtype: str) -> Path:
    key = sha256_json({"format": READING_FORMAT, "model": model.identity, "prompts_sha256": trait_set.prompts_sha256,
                       "layers": list(trait_set.layers), "dtype": dtype})
    return embench_home() / "monitor" / f"{key[:40]}.safetensors"


def load_reading(path: Path) -> Reading | None:
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    tensors = load_file(path)
    return Reading(means=tensors["means"], norms=tensors["norms"])


def save_reading(path: Path, reading: Reading) -> None:
    from safetensors.numpy import save_file

    write_atomic(path, lambda temporary: save_file({"means": np.ascontiguousarray(reading.means),
                                                    "norms": np.ascontiguousarray(reading.norms)}, str(temporary)))

