"""Trait definitions: versioned YAML data files (``tasks/traits/*.yaml``) of contrastive system prompts.

A trait file gives a trait's positive and negative system prompts, the questions asked under each of them (inline,
or a ``*.questions.yaml`` file beside it that several traits share) and eval prompts on which steering along the
trait is measured. A trait without eval prompts of its own uses those of its question file. The counts a
direction needs to be meaningful are checked when the file is read, each failure naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from embench.errors import EmbenchError
from embench.files import field_error, read_yaml
from embench.hashing import sha256_json

MIN_SYSTEM_PROMPTS = 5  # per pole
MIN_QUESTIONS = 30
MIN_EVAL_PROMPTS = 5
QUESTIONS_SUFFIX = ".questions.yaml"

TraitKind = Literal["alignment", "control", "persona"]


def _texts(minimum: int, what: str):
    def check(texts: tuple[str, ...]) -> tuple[str, ...]:
        if any(not text.strip() for text in texts):
            raise ValueError(f"holds an empty {what}")
        if len(set(texts)) != len(texts):
            raise ValueError(f"holds the same {what} twice")
        if len(texts) < minimum:
            raise ValueError(f"needs at least {minimum} {what}s, has {len(texts)}: add more")
        return texts
    return AfterValidator(check)


SystemPrompts = Annotated[tuple[str, ...], _texts(MIN_SYSTEM_PROMPTS, "system prompt")]
Questions = Annotated[tuple[str, ...], _texts(MIN_QUESTIONS, "question")]
EvalPrompts = Annotated[tuple[str, ...], _texts(MIN_EVAL_PROMPTS, "eval prompt")]


class QuestionSet(BaseModel):
    """A ``*.questions.yaml`` file: questions (and eval prompts) shared by several traits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    version: int = Field(ge=1)
    description: str = ""
    questions: Questions
    eval_prompts: EvalPrompts | None = None


class TraitFile(BaseModel):
    """A trait file as written: ``questions`` is a list or the name of a question file beside it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    version: int = Field(ge=1)
    kind: TraitKind
    description: str = ""
    positive_label: str
    negative_label: str
    positive_prompts: SystemPrompts
    negative_prompts: SystemPrompts
    questions: tuple[str, ...] | str  # counted once a question file is read in (Trait)
    eval_prompts: EvalPrompts | None = None


class Trait(BaseModel):
    """A trait with its question file read in: everything an extraction depends on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    version: int
    kind: TraitKind
    description: str
    positive_label: str
    negative_label: str
    positive_prompts: SystemPrompts
    negative_prompts: SystemPrompts
    questions: Questions
    eval_prompts: EvalPrompts

    @property
    def sha256(self) -> str:
        """The trait's content, its shared questions included: the key of every direction extracted from it."""
        return sha256_json(self.model_dump(mode="json"))


def _validated(model: type[BaseModel], path: Path):
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise EmbenchError(f"{path}: expected a mapping of fields (id, version, kind, ...), got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise field_error(path, exc) from None


def load_question_set(path: Path) -> QuestionSet:
    if not path.is_file():
        raise EmbenchError(f"question file {path} does not exist")
    return _validated(QuestionSet, path)


def load_trait_file(path: Path) -> Trait:
    """A trait file, validated, its question file read in."""
    if not path.is_file():
        raise EmbenchError(f"trait file {path} does not exist")
    written: TraitFile = _validated(TraitFile, path)
    questions, eval_prompts = written.questions, written.eval_prompts
    if isinstance(questions, str):
        if not questions.endswith(QUESTIONS_SUFFIX):
            raise EmbenchError(f"{path}: field 'questions': name a '*{QUESTIONS_SUFFIX}' file beside the trait file "
                               f"or list the questions inline (got '{questions}')")
        if not (path.parent / questions).is_file():
            raise EmbenchError(f"{path}: field 'questions': question file {path.parent / questions} does not exist")
        shared = load_question_set(path.parent / questions)
        questions = shared.questions
        eval_prompts = eval_prompts or shared.eval_prompts
    if eval_prompts is None:
        raise EmbenchError(f"{path}: field 'eval_prompts': needs at least {MIN_EVAL_PROMPTS} eval prompts, in the "
                           "trait file or in its question file")
    try:
        return Trait(**{**written.model_dump(exclude={"questions", "eval_prompts"}), "questions": questions,
                        "eval_prompts": eval_prompts})
    except ValidationError as exc:  # only inline questions can still be too few: a question file checked its own
        raise field_error(path, exc) from None


def traits_dir() -> Path:
    """The traits embench ships: ``traits/`` in the tasks folder (see ``embench.tasks.tasks_dir``)."""
    from embench.tasks import tasks_dir

    return tasks_dir() / "traits"


def trait_paths(folder: Path) -> list[Path]:
    """The trait files of a folder: every ``*.yaml`` except the shared ``*.questions.yaml`` files."""
    if not folder.is_dir():
        raise EmbenchError(f"traits folder {folder} does not exist")
    paths = sorted(path for path in folder.glob("*.yaml") if not path.name.endswith(QUESTIONS_SUFFIX))
    if not paths:
        raise EmbenchError(f"{folder} holds no trait files (*.yaml other than *{QUESTIONS_SUFFIX})")
    return paths


def load_traits(source: Path | None = None, only: list[str] | None = None) -> list[tuple[Path, Trait]]:
    """Traits of a folder (default: the shipped ones) or one trait file, optionally only the named ids."""
    source = source or traits_dir()
    paths = [source] if source.suffix in (".yaml", ".yml") else trait_paths(source)
    loaded = [(path, load_trait_file(path)) for path in paths]
    seen: dict[str, Path] = {}
    for path, trait in loaded:
        if trait.id in seen:
            raise EmbenchError(f"{path}: trait id '{trait.id}' is also used by {seen[trait.id]}")
        seen[trait.id] = path
    if only:
        unknown = sorted(set(only) - set(seen))
        if unknown:
            raise EmbenchError(f"unknown trait(s) {', '.join(unknown)} in {source} (known: {', '.join(sorted(seen))})")
        loaded = [(path, trait) for path, trait in loaded if trait.id in only]
    return loaded


def find_trait(reference: str) -> tuple[Path, Trait]:
    """A trait by file path, or by id among the shipped traits."""
    path = Path(reference)
    if path.suffix in (".yaml", ".yml"):
        return path, load_trait_file(path)
    return load_traits(only=[reference])[0]
