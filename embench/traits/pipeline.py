"""Extracting a set of traits into a directions folder, resumably, and the persona vector of the steering defense."""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path

from embench.errors import EmbenchError
from embench.files import check_writable_folder
from embench.hashing import sha256_json
from embench.home import embench_home
from embench.models import ResolvedModel, resolve_model
from embench.progress import Status, silent
from embench.traits.activations import check_layers, parse_layers
from embench.traits.extract import ExtractionSettings, TraitExtractor
from embench.traits.spec import Trait, find_trait, load_traits
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


@dataclass(frozen=True)
class ExtractSpec:
    """What ``embench traits extract`` takes; layers as text ('all', '4,8,12', '6-20'), checked against the model."""

    out: Path
    model: str = "default"
    base: str | None = None
    traits: Path | None = None  # a folder or file of trait definitions; None: the shipped traits
    only: tuple[str, ...] | None = None  # trait ids; None: every trait
    layers: str = "all"
    sweep_layers: str | None = None
    position: str = "last"
    dtype: str = "auto"
    batch_size: int = 128
    sweep: bool = True
    steer_coefficient: float = 0.25
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def prepare(self) -> PreparedExtraction:
        """Resolve the model and the traits and check every setting against them; loads no weights, writes nothing."""
        definitions = load_traits(self.traits, only=list(self.only) if self.only else None)
        model = resolve_model(self.model, self.base, allow_pickle=self.allow_pickle,
                              trust_remote_code=self.trust_remote_code)
        n_layers, _ = model_shape(model)
        settings = ExtractionSettings(
            layers=parse_layers(self.layers, n_layers, model.name), position=self.position, dtype=self.dtype,
            batch_size=self.batch_size, sweep=self.sweep, steer_coefficient=self.steer_coefficient,
            sweep_layers=parse_layers(self.sweep_layers, n_layers, model.name) if self.sweep_layers else None)
        return prepare_extraction(model, definitions, Path(self.out), settings)


@dataclass(frozen=True)
class PreparedExtraction:
    model: ResolvedModel
    traits: list[tuple[Path, Trait]]  # in the order results are returned
    out: Path
    settings: ExtractionSettings
    reused: list[ExtractionResult]  # traits ``out`` already holds from the same model, content and settings
    todo: list[tuple[Path, Trait]]


def prepare_extraction(model: ResolvedModel, traits: list[tuple[Path, Trait]], out: Path,
                       settings: ExtractionSettings = ExtractionSettings()) -> PreparedExtraction:
    """Check ``out`` (a directions folder of this model and these settings, or new) and find which traits it
    already holds up to date."""
    check_writable_folder(out)
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
    reused, todo = [], []
    for path, trait in traits:
        if trait.id in existing and _up_to_date(existing[trait.id], trait, wanted):
            reused.append(ExtractionResult(trait.id, out / f"{trait.id}.json", reused=True))
        else:
            todo.append((path, trait))
    return PreparedExtraction(model=model, traits=traits, out=out, settings=settings, reused=reused, todo=todo)


def run_extraction(prepared: PreparedExtraction, status: Status = silent) -> list[ExtractionResult]:
    """Extract every trait not yet in the folder, saving each as it finishes (an interrupted extraction resumes with
    the next unfinished trait); results in the order of the prepared traits."""
    results = list(prepared.reused)
    if prepared.todo:
        status(f"loading {prepared.model.name}", 0, None)
        extractor = TraitExtractor(prepared.model, prepared.settings)
        for path, trait in prepared.todo:
            extracted = extractor.extract(trait, status)
            results.append(ExtractionResult(trait.id, save_trait(prepared.out, extracted, extractor, path),
                                            reused=False))
    order = [trait.id for _, trait in prepared.traits]
    return sorted(results, key=lambda result: order.index(result.trait_id))


def extract_traits(model: ResolvedModel, traits: list[tuple[Path, Trait]], out: Path,
                   settings: ExtractionSettings = ExtractionSettings(),
                   status: Status = silent) -> list[ExtractionResult]:
    """:func:`prepare_extraction` then :func:`run_extraction`, for callers that already hold a resolved model."""
    return run_extraction(prepare_extraction(model, traits, out, settings), status)


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
