"""File I/O in one place: reading embench's data files with every problem reported as one line naming file and
line; atomic writes, folder locks, the output-folder check; the clock and the git commit stamped on records."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

import embench
from embench.errors import EmbenchError

LOCK_FILE = ".lock"  # FolderLock's file: its presence does not make a folder foreign


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def embench_git_sha() -> str | None:
    """The commit embench itself runs from, when it runs from a git checkout."""
    root = Path(embench.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` fills a temporary file beside ``path``, which then replaces ``path`` in one rename: a reader never
    sees half a file, and an interrupted write leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path, what: str):
    """A JSON file embench wrote; a file that is not one is named in one line (``what`` says what it should be)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EmbenchError(f"{path}: not valid JSON ({exc}): this file is not {what}") from None


class FolderLock:
    """An exclusive lock on a folder against every other embench writer, held until closed; a context manager.

    The lock is taken on the folder's ``.lock`` file, opened for writing: on NFS and SMB mounts an exclusive lock
    needs a file open for writing (a folder cannot be)."""

    def __init__(self, path: Path, busy: str):
        path.mkdir(parents=True, exist_ok=True)
        self._file: IO | None = open(path / LOCK_FILE, "w")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise EmbenchError(busy) from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def check_output_folder(path: Path, record_name: str, fingerprint: str, kind: str, other: str) -> None:
    """An output folder may be missing, empty but for its lock, or hold the record of the very same job (it then
    resumes); a folder of anything else is refused. ``kind``: what the folder should be ("a training folder");
    ``other``: what a record of another fingerprint holds ("a different training run (...)")."""
    if not path.exists():
        return
    record = path / record_name
    if not path.is_dir() or (not record.is_file() and any(p.name != LOCK_FILE for p in path.iterdir())):
        raise EmbenchError(f"--out {path} exists and is not {kind}: choose another --out")
    if record.is_file():
        found = read_json(record, f"the record of {kind}")
        if not isinstance(found, dict) or found.get("fingerprint") != fingerprint:
            raise EmbenchError(f"{path} holds {other}: use another --out, or delete it")


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


def validated(model: type[Model], data, where: str, whole: str = "(file)") -> Model:
    """``data`` as ``model``; a problem is one line, ``{where}: field 'a.b': message`` (``whole`` names a problem
    of the whole object)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = first_error(exc)
        raise EmbenchError(f"{where}: field '{field or whole}': {message}") from None


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
        items.append((number, validated(model, data, f"{path}:{number}", whole="(line)")))
    return items
