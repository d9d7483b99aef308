"""Reading embench's YAML data files, with every problem reported as one line naming file and line."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from embench.errors import EmbenchError


def read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise EmbenchError(f"{where}: YAML syntax error ({getattr(exc, 'problem', None) or exc})") from None


def first_error(exc: ValidationError) -> tuple[str, str]:
    """The first validation problem as (dotted field, message); the field is "" for a whole-object problem. The
    message of a validator's own check loses pydantic's "Value error, " prefix: it is written for the user."""
    error = exc.errors()[0]
    return ".".join(str(part) for part in error["loc"]), error["msg"].removeprefix("Value error, ")


def field_error(path: Path, exc: ValidationError) -> EmbenchError:
    """A validation problem of a YAML file, at the line of its top-level field (1 when the field is missing)."""
    field, message = first_error(exc)
    top = field.split(".")[0]
    line = next((number for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                 if top and text.startswith(f"{top}:")), 1)
    return EmbenchError(f"{path}:{line}: field '{field or '(file)'}': {message}")
