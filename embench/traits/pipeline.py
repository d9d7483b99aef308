"""Extracting a set of traits into a directions folder, resumably, and the persona vector of the steering defense."""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path

from embench.errors import EmbenchError
from embench.hashing import sha256_json
from embench.home import embench_home
from embench.models import ResolvedModel
from embench.traits.activations import check_layers
from embench.traits.extract import ExtractionSettings, Status, TraitExtractor
from embench.traits.spec import Trait, find_trait
from embench.traits.store import check_model, folder_fingerprint, load_directions, read_metadata, save_trait


@dataclass(frozen=True)
class ExtractionResult:
    trait_id: str
    metadata_path: Path
    reused: bool


def model_shape(model: ResolvedModel) -> tuple[int, int]:
    """(decoder layers, hidden size), from the config alone: layer arguments are checked before weights load."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model.base_path, trust_remote_code=model.trust_remote_code)
    config = getattr(config, "text_config", config)
    return config.num_hidden_layers, config.hidden_size


def _wanted(model: ResolvedModel, settings: ExtractionSettings, layers: tuple[int, ...]) -> dict:
    return {"model_sha256": sha256_json(model.identity), **settings.record(), "layers": list(layers)}


def _up_to_date(metadata: dict, trait: Trait, wanted: dict) -> bool:
    recorded = {**folder_fingerprint(metadata), **metadata["extraction"]}
    recorded.pop("layer_convention", None)
    return metadata["trait"]["sha256"] == trait.sha256 and recorded == wanted


def extract_traits(model: ResolvedModel, traits: list[tuple[Path, Trait]], out: Path,
                   settings: ExtractionSettings = ExtractionSettings(),
                   status: Status | None = None) -> list[ExtractionResult]:
    """Extract each trait into ``out``; a trait already there from the same model, content and settings is kept,
    so an interrupted extraction resumes with the next unfinished trait."""
    if out.exists() and not out.is_dir():
        raise EmbenchError(f"--out {out} is a file: choose a folder")
    n_layers, _ = model_shape(model)
    layers = settings.resolved_layers(n_layers, model.name)
    if settings.sweep:
        settings.candidate_layers(layers, n_layers, model.name)
    wanted = _wanted(model, settings, layers)
    existing = read_metadata(out) if out.is_dir() else {}
    for metadata in existing.values():
        check_model(metadata, model, out)
        fingerprint = folder_fingerprint(metadata)
        if fingerprint != {key: wanted[key] for key in fingerprint}:
            raise EmbenchError(f"--out {out} holds directions extracted with other settings (position, dtype or layers: "
                               f"{fingerprint['position']}, {fingerprint['dtype']}, layers {fingerprint['layers'][0]}-"
                               f"{fingerprint['layers'][-1]}): use another --out")
    results, todo = [], []
    for path, trait in traits:
        if trait.id in existing and _up_to_date(existing[trait.id], trait, wanted):
            results.append(ExtractionResult(trait.id, out / f"{trait.id}.json", reused=True))
        else:
            todo.append((path, trait))
    if todo:
        if status is not None:
            status(f"loading {model.name}", 0, None)
        extractor = TraitExtractor(model, settings)
        for path, trait in todo:
            extracted = extractor.extract(trait, status)
            results.append(ExtractionResult(trait.id, save_trait(out, extracted, extractor, path), reused=False))
    order = [trait.id for _, trait in traits]
    return sorted(results, key=lambda result: order.index(result.trait_id))


def persona_vector(model: ResolvedModel, trait: str = "evil", layer: int | None = None):
    """(unit direction of ``trait`` at a block output, the layer used) for steering ``model``.

    ``layer=None`` takes the layer its steering sweep chose. Only this trait is extracted (every layer, last prompt
    token, with the sweep: about 400 short prompts and a few dozen steered passes), once per model and trait
    content: the result is cached under ``$EMBENCH_HOME/traits/<model hash>/<trait id>-<trait hash>/``, so a second
    call, for any layer, only reads it. ``trait`` is a shipped trait id or a trait file.
    """
    path, definition = find_trait(trait)
    n_layers, _ = model_shape(model)
    if layer is not None:
        check_layers([layer], n_layers, model.name)
    settings = ExtractionSettings()
    # The dtype is in the name: directions extracted on another machine's hardware (a shared EMBENCH_HOME, or an
    # earlier default) sit beside these instead of being refused as other settings.
    folder = (embench_home() / "traits" / sha256_json(model.identity)[:16]
              / f"{definition.id}-{definition.sha256[:12]}-{settings.dtype}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Two training runs starting at once extract once: the second waits, then reads the first one's result.
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        extract_traits(model, [(path, definition)], folder, settings)
    directions = load_directions(folder, model)[definition.id]
    chosen = directions.chosen_layer if layer is None else layer
    return directions.direction(chosen), chosen
