"""Reading embench's YAML data files, with every problem reported as one line naming file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

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


Model = TypeVar("Model", bound=BaseModel)


def read_jsonl_models(path: Path, model: type[Model], fields: str) -> list[tuple[int, Model]]:
    """Each non-empty line of a JSON Lines file validated as ``model``, with its line number; every problem is one
    line naming file and line (``fields`` lists the expected fields for the message about non-objects)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise EmbenchError(f"{path}: not UTF-8 text: expected JSON Lines") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EmbenchError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise EmbenchError(f"{path}:{number}: each line must be a JSON object ({fields})")
        try:
            items.append((number, model.model_validate(data)))
        except ValidationError as exc:
            field, message = first_error(exc)
            raise EmbenchError(f"{path}:{number}: field '{field or '(line)'}': {message}") from None
    return items
