"""A directions folder: per trait, ``<id>.safetensors`` (tensors) and ``<id>.json`` (what they were extracted from).

``<id>.safetensors`` holds float32 ``direction`` (unit rows), ``positive_mean`` and ``negative_mean``, each
``[layers, hidden]`` in the order of the metadata's ``layers``. ``<id>.json`` records the model (base and adapter
hashes), the trait (id, version, content hash), the prompts hash, the extraction settings, held-out probe accuracy
per layer, the steering sweep and the chosen layer, and the sha256 of the tensors file; it is written last, so a
trait whose JSON exists is complete. Every trait in one folder comes from the same model and extraction settings,
and loading for a model whose weights differ is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import embench
from embench.errors import EmbenchError
from embench.files import embench_git_sha, now, read_json, write_atomic, write_json_atomic
from embench.hashing import sha256_file, sha256_json
from embench.models import ResolvedModel
from embench.traits.extract import LAYER_CONVENTION, ExtractedTrait, TraitExtractor

FORMAT = "embench-trait-directions"
FORMAT_VERSION = 1
TENSORS = ("direction", "positive_mean", "negative_mean")


def model_record(model: ResolvedModel, n_layers: int, hidden_size: int, chat_template_sha256: str) -> dict:
    return {**model.provenance(), "sha256": sha256_json(model.identity), "n_layers": n_layers,
            "hidden_size": hidden_size, "chat_template_sha256": chat_template_sha256}


def save_trait(folder: Path, extracted: ExtractedTrait, extractor: TraitExtractor, trait_file: Path | None) -> Path:
    """Write one trait's tensors, then its metadata (the commit point); returns the metadata path."""
    from safetensors.torch import save_file

    trait = extracted.trait
    folder.mkdir(parents=True, exist_ok=True)
    tensors_path = folder / f"{trait.id}.safetensors"
    tensors = {"direction": extracted.directions.contiguous(), "positive_mean": extracted.positive_mean.contiguous(),
               "negative_mean": extracted.negative_mean.contiguous()}
    header = {"format": FORMAT, "trait": trait.id, "layers": ",".join(map(str, extracted.layers))}
    write_atomic(tensors_path, lambda temporary: save_file(tensors, str(temporary), metadata=header))
    settings = extractor.settings
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "embench_version": embench.__version__,
        "embench_git_sha": embench_git_sha(),
        "created": now(),
        "trait": {"id": trait.id, "version": trait.version, "kind": trait.kind, "description": trait.description,
                  "positive_label": trait.positive_label, "negative_label": trait.negative_label,
                  "sha256": trait.sha256, "file": str(trait_file.resolve()) if trait_file else None,
                  "counts": {"positive_prompts": len(trait.positive_prompts),
                             "negative_prompts": len(trait.negative_prompts), "questions": len(trait.questions),
                             "eval_prompts": len(trait.eval_prompts)}},
        "prompts_sha256": extracted.prompts_sha256,
        "model": model_record(extractor.model, extractor.n_layers, extractor.hidden_size, extractor.template.sha256),
        "extraction": {**settings.record(), "layers": list(extracted.layers), "layer_convention": LAYER_CONVENTION},
        "probe": extracted.probe,
        "steering": extracted.sweep,
        "chosen_layer": extracted.chosen_layer,
        "chosen_by": extracted.chosen_by,
        "tensors": {"file": tensors_path.name, "sha256": sha256_file(tensors_path), "names": list(TENSORS)},
        "wall_s": extracted.wall_s,
    }
    metadata_path = folder / f"{trait.id}.json"
    write_json_atomic(metadata_path, metadata)
    return metadata_path


@dataclass(frozen=True)
class TraitDirections:
    """A trait's saved directions, as monitoring and steering use them."""

    metadata: dict
    layers: tuple[int, ...]
    directions: object  # torch.Tensor [layers, hidden], unit rows
    positive_mean: object
    negative_mean: object

    @property
    def id(self) -> str:
        return self.metadata["trait"]["id"]

    @property
    def chosen_layer(self) -> int:
        return self.metadata["chosen_layer"]

    def direction(self, layer: int | None = None):
        """The unit direction at a layer (default: the chosen layer)."""
        layer = self.chosen_layer if layer is None else layer
        if layer not in self.layers:
            n_layers = self.metadata["model"]["n_layers"]
            where = "outside the model" if not 0 <= layer < n_layers else "not among the extracted layers"
            raise EmbenchError(f"layer {layer} is {where} for trait '{self.id}': extracted layers are "
                               f"{_ranges(self.layers)} of {n_layers}")
        return self.directions[self.layers.index(layer)]


def _ranges(layers: tuple[int, ...]) -> str:
    parts, start = [], layers[0]
    for previous, current in zip(layers, layers[1:] + (None,)):
        if current != previous + 1:
            parts.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = current
    return ",".join(parts)


def read_metadata(folder: Path) -> dict[str, dict]:
    """The metadata of every trait in a directions folder, by trait id."""
    if not folder.is_dir():
        raise EmbenchError(f"directions folder {folder} does not exist: create it with `embench traits extract`")
    found = {}
    for path in sorted(folder.glob("*.json")):
        metadata = read_json(path, "a trait-directions file of `embench traits extract` (re-extract that trait)")
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise EmbenchError(f"{path} is not an embench trait-directions file: this folder holds other files")
        found[metadata["trait"]["id"]] = metadata
    return found


def folder_fingerprint(metadata: dict) -> dict:
    """What every trait of one folder must share: the model and how activations were read."""
    return {"model_sha256": metadata["model"]["sha256"], **{key: metadata["extraction"][key]
            for key in ("position", "dtype", "response_tokens", "layers")}}


def check_model(metadata: dict, model: ResolvedModel, where: Path, compare: str = "model") -> None:
    """Refuse directions extracted from other weights: the whole model, or (``compare="base"``) its base only, for
    monitoring the checkpoints of a fine-tune of the model the directions came from."""
    recorded = metadata["model"]
    same = recorded["base_sha256"] == model.base_sha256 and (
        compare == "base" or recorded["adapter_sha256"] == model.adapter_sha256)
    if not same:
        def named(sha: str | None, adapter: str | None) -> str:
            return f"base {sha[:12]}" + (f" + adapter {adapter[:12]}" if adapter else "")

        raise EmbenchError(
            f"{where} was extracted from {recorded['name']} ({named(recorded['base_sha256'], recorded['adapter_sha256'])}), "
            f"not from {model.name} ({named(model.base_sha256, model.adapter_sha256)}): re-extract with "
            f"`embench traits extract --model {model.reference} --out DIR`")


def load_directions(folder: Path, model: ResolvedModel | None = None, traits: list[str] | None = None,
                    compare: str = "model") -> dict[str, TraitDirections]:
    """Every trait (or the named ones) of a directions folder, checked against ``model`` when one is given."""
    from safetensors import safe_open

    found = read_metadata(folder)
    if not found:
        raise EmbenchError(f"{folder} holds no trait directions: create them with `embench traits extract`")
    if traits:
        unknown = sorted(set(traits) - set(found))
        if unknown:
            raise EmbenchError(f"{folder} has no directions for trait(s) {', '.join(unknown)} "
                               f"(it has: {', '.join(sorted(found))})")
        found = {trait_id: found[trait_id] for trait_id in traits}
    fingerprints = {json.dumps(folder_fingerprint(metadata), sort_keys=True) for metadata in found.values()}
    if len(fingerprints) > 1:
        raise EmbenchError(f"{folder} mixes directions from different models or settings: extract into separate folders")
    loaded = {}
    for trait_id, metadata in found.items():
        if model is not None:
            check_model(metadata, model, folder, compare)
        tensors_path = folder / metadata["tensors"]["file"]
        if not tensors_path.is_file() or sha256_file(tensors_path) != metadata["tensors"]["sha256"]:
            raise EmbenchError(f"{tensors_path} is missing or does not match its metadata: re-extract trait '{trait_id}'")
        with safe_open(str(tensors_path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in TENSORS}
        loaded[trait_id] = TraitDirections(metadata=metadata, layers=tuple(metadata["extraction"]["layers"]),
                                           directions=tensors["direction"], positive_mean=tensors["positive_mean"],
                                           negative_mean=tensors["negative_mean"])
    return loaded
