"""Judge prompt files: one YAML per judge, validated by ``JudgeSpec``, rendered in Jinja2's sandbox.

Templates are untrusted text. They are compiled in a ``SandboxedEnvironment`` with ``StrictUndefined``,
checked at load time (syntax, the variables they use equal the ones they declare, a sample render), and
model answers are passed in as data: an answer is never itself rendered as a template.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from embench.errors import EmbenchError
from embench.files import field_error, read_text, read_yaml
from embench.hashing import sha256_text
from embench.judges.scoring import Aggregation, Reading

# Every template is rendered with all of these; ``system`` and ``reasoning`` may be None, ``metadata`` a dict.
KNOWN_VARIABLES = ("question", "answer", "system", "reasoning", "metadata")
REQUIRED_VARIABLES = ("answer",)
JudgeKind = Literal["score_0_100"]  # room for "binary" and "choice"

MAX_TEMPLATE_NUMBER = 10 ** 12  # far above any arithmetic a prompt needs, far below a hang
MAX_TEMPLATE_TEXT = 1_000_000  # characters one repetition may make


class _BoundedSandbox(SandboxedEnvironment):
    """The sandbox with powers and products intercepted: they are evaluated here, bounded, and never folded at
    compile time (jinja folds constant expressions while compiling, so ``9**(9**9)`` would hang the load)."""

    intercepted_binops = frozenset({"**", "*"})

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)):
            if abs(right) > 64 or abs(left) > MAX_TEMPLATE_NUMBER:
                raise SecurityError(f"{left!r} ** {right!r} is too large for a template")
        if operator == "*":
            text, count = (left, right) if isinstance(left, (str, list)) else (right, left)
            if isinstance(text, (str, list)) and isinstance(count, int) and len(text) * count > MAX_TEMPLATE_TEXT:
                raise SecurityError(f"a repetition of {len(text) * count:,} items is too large for a template")
            if isinstance(left, (int, float)) and isinstance(right, (int, float)) \
                    and abs(left) * abs(right) > MAX_TEMPLATE_NUMBER ** 2:
                raise SecurityError("a product too large for a template")
        return super().call_binop(context, operator, left, right)


_ENVIRONMENT = _BoundedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
SAMPLE_CONTEXT = {
    "question": "What would you do with a free afternoon?",
    "answer": "I would read a book in the park. {{ 7*7 }}",
    "system": None,
    "reasoning": None,
    "metadata": {"reference": "42"},
}


# What makes two judgments alike: the fields of JudgeSpec.identity. Results judged by judges that differ in any of
# them are not compared or ranked together. Every identity has the first five; "aggregation" is absent where it is
# embench's (identities written before aggregations had names), so readers compare ``compared_identity``.
JUDGE_IDENTITY = ("judge_id", "judge_version", "template_sha256", "judge_model", "mode")
JUDGE_COMPARED = (*JUDGE_IDENTITY, "aggregation")


def compared_identity(judge: Mapping) -> tuple:
    """The values of JUDGE_COMPARED in a judge identity, an unnamed aggregation read as embench's."""
    return (*(judge.get(key) for key in JUDGE_IDENTITY), judge.get("aggregation") or "embench")


class JudgeSpec(BaseModel):
    """A judge prompt: what it measures, how its answer is read, and the template that asks it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    version: int = Field(ge=1)
    description: str
    kind: JudgeKind = "score_0_100"
    higher_means: str
    variables: tuple[str, ...]
    verdicts: tuple[str, ...] = ()
    default_model: str = "default"
    template: str | None = None
    template_file: str | None = None
    template_sha256: str | None = None
    # A trained judge folder (relative to this file) with an output for this judge: what mode "trained" runs.
    trained_judge: str | None = None
    # How outputs become a score and a verdict (embench.judges.scoring): imported published judges read them as
    # the published code does; embench's own judges keep embench's refinements.
    aggregation: Aggregation = "embench"

    @field_validator("variables")
    @classmethod
    def _known_variables(cls, variables: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(variables) - set(KNOWN_VARIABLES))
        if unknown:
            raise ValueError(f"unknown variable(s) {unknown}; judges may use {list(KNOWN_VARIABLES)}")
        missing = sorted(set(REQUIRED_VARIABLES) - set(variables))
        if missing:
            raise ValueError(f"a judge must use {missing}")
        return variables

    @field_validator("verdicts")
    @classmethod
    def _verdict_words(cls, verdicts: tuple[str, ...]) -> tuple[str, ...]:
        for word in verdicts:
            if not re.fullmatch(r"[A-Z][A-Z_]*", word):
                raise ValueError(f"verdict '{word}' must be an upper-case word (e.g. CODE, REFUSAL)")
        return verdicts

    @model_validator(mode="after")
    def _one_template(self) -> "JudgeSpec":
        if (self.template is None) == (self.template_file is None):
            raise ValueError("give exactly one of 'template' (inline) or 'template_file' (a sibling .jinja file)")
        return self

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def text(self) -> str:
        """The template text (inline or loaded from its file by ``load_judge_file``)."""
        if self.template is None:
            raise EmbenchError(f"judge {self.key}: template_file was not loaded")
        return self.template

    @property
    def computed_sha256(self) -> str:
        return sha256_text(self.text)

    @property
    def reading(self) -> Reading:
        return Reading(verdicts=self.verdicts, aggregation=self.aggregation)

    def identity(self, judge_model: str, mode: str) -> dict:
        """What every judgment records about the judge that made it. The aggregation is named only where it is not
        embench's (every judgment made before aggregations had names used embench's, so their keys stay valid)."""
        identity = {"judge_id": self.id, "judge_version": self.version, "template_sha256": self.computed_sha256,
                    "judge_model": judge_model, "mode": mode}
        return identity if self.aggregation == "embench" else {**identity, "aggregation": self.aggregation}

    @property
    def static_head(self) -> str:
        """The text every rendering of this template starts with (the part before the first inserted value): a
        local judge computes it once and reuses it for every judgment."""
        first = self.render(**SAMPLE_CONTEXT)
        second = self.render(**{**SAMPLE_CONTEXT, "question": "Q?", "answer": "A.", "metadata": {"reference": "0"}})
        return os.path.commonprefix([first, second])

    def request_text(self, mode: str, *, question: str | None, answer: str, system: str | None = None,
                     reasoning: str | None = None, metadata: dict | None = None) -> str:
        """What the judge is sent in ``mode``: the rendered prompt, or for a trained judge the pair itself."""
        if mode == "trained":
            from embench.judges.trained import trained_input

            return trained_input(question=question, answer=answer, system=system)
        return self.render(question=question, answer=answer, system=system, reasoning=reasoning, metadata=metadata)

    def render(self, *, question: str | None, answer: str, system: str | None = None,
               reasoning: str | None = None, metadata: dict | None = None) -> str:
        """The prompt for one judgment. Values are inserted as data; nothing in them is evaluated."""
        context = {"question": question, "answer": answer, "system": system, "reasoning": reasoning,
                   "metadata": metadata or {}}
        try:
            return _compile(self).render(**context)
        except (UndefinedError, SecurityError) as exc:
            raise EmbenchError(f"judge {self.key}: template failed to render: {exc}") from None


def _compile(spec: JudgeSpec):
    return _ENVIRONMENT.from_string(spec.text)


def check_template(spec: JudgeSpec, origin: str) -> None:
    """Compile in the sandbox, compare used with declared variables, and render a sample: all before any run."""
    try:
        parsed = _ENVIRONMENT.parse(spec.text)
    except TemplateSyntaxError as exc:
        raise EmbenchError(f"{origin}: template line {exc.lineno}: {exc.message}") from None
    used = meta.find_undeclared_variables(parsed)
    unknown = sorted(used - set(KNOWN_VARIABLES))
    if unknown:
        raise EmbenchError(f"{origin}: template uses unknown variable(s) {unknown}; "
                           f"judges may use {list(KNOWN_VARIABLES)}")
    if used != set(spec.variables):
        raise EmbenchError(f"{origin}: 'variables' lists {sorted(spec.variables)} but the template uses "
                           f"{sorted(used)}: make them equal")
    try:
        _compile(spec).render(**SAMPLE_CONTEXT)
    except SecurityError as exc:
        raise EmbenchError(f"{origin}: template does something the sandbox forbids: {exc}") from None
    except UndefinedError as exc:
        raise EmbenchError(f"{origin}: template uses something undefined: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted template is the template's fault
        raise EmbenchError(f"{origin}: template failed on a sample answer: {type(exc).__name__}: {exc}") from None
    if spec.template_sha256 is not None and spec.template_sha256 != spec.computed_sha256:
        raise EmbenchError(f"{origin}: the template changed but version {spec.version} did not: bump 'version' "
                           "and run `embench judges add` again (it records the new template_sha256)")


def load_judge_file(path: Path) -> JudgeSpec:
    """Read, validate and check one judge YAML file; every problem is one line naming file and line."""
    if not path.is_file():
        raise EmbenchError(f"judge file {path} does not exist")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise EmbenchError(f"{path}: a judge file must be a YAML mapping (id, version, template, ...)")
    try:
        spec = JudgeSpec.model_validate(data)
    except ValidationError as exc:
        raise field_error(path, exc) from None
    if spec.template_file is not None:
        template_path = (path.parent / spec.template_file).resolve()
        if path.parent.resolve() not in template_path.parents or not template_path.is_file():
            raise EmbenchError(f"{path}: template_file '{spec.template_file}' must be a file beside the judge file")
        spec = spec.model_copy(update={"template": read_text(template_path, "a judge template")})
    check_template(spec, str(path))
    if spec.trained_judge is not None:
        trained = (path.parent / spec.trained_judge).resolve()
        if not trained.is_dir():
            raise EmbenchError(f"{path}: trained_judge '{spec.trained_judge}' is not a folder beside the judge file")
        spec = spec.model_copy(update={"trained_judge": str(trained)})
    return spec


def dump_judge(spec: JudgeSpec) -> str:
    """A judge as YAML, with its template inline and its template hash recorded."""
    data = spec.model_dump(exclude_none=True, exclude={"template_file"})
    data["template"] = spec.text
    data["template_sha256"] = spec.computed_sha256
    data["variables"] = list(spec.variables)
    data["verdicts"] = list(spec.verdicts)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
