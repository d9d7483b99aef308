"""Importing the published trait-definition YAML of trait-space monitoring (arXiv 2606.07631) as embench traits.

The published file has ``traits`` (per trait: ``description``, ``positive_label``, ``negative_label``,
``positive_system_prompts``, ``negative_system_prompts``), shared ``questions`` and ``eval_prompts`` grouped by
category. It becomes ``<stem>.questions.yaml`` (the questions, and the eval prompts in file order) plus one
``<trait>.yaml`` per trait that refers to it. The published file does not say which traits are semantic controls:
``control`` names them (by default the seven control traits of the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from embench.errors import EmbenchError
from embench.files import first_error, read_yaml
from embench.hashing import file_safe, sha256_file
from embench.traits.spec import QUESTIONS_SUFFIX, QuestionSet, TraitFile, load_trait_file

PUBLISHED_CONTROLS = ("verbosity", "formality", "technicality", "humor", "concreteness", "warmth", "creativity")


class PublishedTrait(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    positive_label: str
    negative_label: str
    positive_system_prompts: list[str]
    negative_system_prompts: list[str]


class PublishedTraits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    traits: dict[str, PublishedTrait]
    questions: list[str]
    eval_prompts: dict[str, list[str]] | list[str]


@dataclass
class TraitImport:
    question_set: QuestionSet
    traits: list[TraitFile]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (published id, reason)
    source_sha256: str = ""


def read_published_traits(path: Path, control: tuple[str, ...] | None = None) -> TraitImport:
    """The published file as embench trait definitions; a trait embench cannot use is skipped with its reason.

    ``control`` names the semantic control traits (default: those of the paper that the file has)."""
    if not path.is_file():
        raise EmbenchError(f"trait file {path} does not exist")
    try:
        published = PublishedTraits.model_validate(read_yaml(path))
    except ValidationError as exc:
        where, message = first_error(exc)
        raise EmbenchError(f"{path} is not in the published trait format (traits with positive/negative system "
                           f"prompts, questions, eval_prompts): field '{where or '(file)'}': {message}") from None
    eval_prompts = published.eval_prompts
    if isinstance(eval_prompts, dict):
        eval_prompts = [prompt for prompts in eval_prompts.values() for prompt in prompts]
    source_sha256 = sha256_file(path)
    set_id = file_safe(path.stem.lower())
    try:
        question_set = QuestionSet(id=set_id, version=1, questions=tuple(published.questions),
                                   eval_prompts=tuple(dict.fromkeys(eval_prompts)),
                                   description=f"Imported from {path.name} (sha256 {source_sha256[:12]}).")
    except ValidationError as exc:
        where, message = first_error(exc)
        raise EmbenchError(f"{path}: field '{where.split('.')[0]}': {message}") from None
    result = TraitImport(question_set=question_set, traits=[], source_sha256=source_sha256)
    if control is None:
        control = tuple(name for name in PUBLISHED_CONTROLS if name in published.traits)
    unknown = sorted(set(control) - set(published.traits))
    if unknown:
        raise EmbenchError(f"control trait(s) {', '.join(unknown)} are not in {path} "
                           f"(it has: {', '.join(published.traits)})")
    for name, trait in published.traits.items():
        try:
            result.traits.append(TraitFile(
                id=name.lower(), version=1, kind="control" if name in control else "alignment",
                description=trait.description, positive_label=trait.positive_label,
                negative_label=trait.negative_label, positive_prompts=tuple(trait.positive_system_prompts),
                negative_prompts=tuple(trait.negative_system_prompts), questions=f"{set_id}{QUESTIONS_SUFFIX}"))
        except ValidationError as exc:
            where, message = first_error(exc)
            result.skipped.append((name, f"{where.split('.')[0]}: {message}"))
    if not result.traits:
        raise EmbenchError(f"{path}: no trait could be imported (" + "; ".join(f"{name}: {reason}" for name, reason
                                                                              in result.skipped) + ")")
    return result


def _dump(model: BaseModel, header: str) -> str:
    return header + yaml.safe_dump(model.model_dump(mode="json", exclude_none=True), sort_keys=False,
                                   allow_unicode=True, width=120)


def write_trait_import(imported: TraitImport, source: Path, out: Path) -> list[Path]:
    """Write the question file and trait files into ``out``, then load each trait back as embench reads it.

    Nothing is written when a target exists with other content; an identical file is left as it is.
    """
    header = (f"# Written by `embench traits import` from {source.name} (sha256 {imported.source_sha256}), the "
              "published trait definitions of trait-space monitoring.\n")
    set_file = f"{imported.question_set.id}{QUESTIONS_SUFFIX}"
    planned = [(out / set_file, _dump(imported.question_set, header))]
    planned += [(out / f"{trait.id}.yaml", _dump(trait, header)) for trait in imported.traits]
    for target, text in planned:
        if target.exists() and (not target.is_file() or target.read_text(encoding="utf-8") != text):
            raise EmbenchError(f"{target} already exists with other content: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for target, text in planned:
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(target)
    for target, _ in planned[1:]:
        load_trait_file(target)
    return [target for target, _ in planned]
