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
from embench.layout import LIBRARY_LOG_FILE

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


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file; one that cannot be read or is not UTF-8 (UTF-16, binary) is named in one line (``what``
    says what it should be)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EmbenchError(f"{path}: not UTF-8 text (byte {exc.start}): this file should be {what}, saved as "
                           "UTF-8") from None
    except OSError as exc:
        raise EmbenchError(f"{path}: cannot be read ({exc.strerror or exc}): this file should be {what}") from None


def _refuse_non_finite(constant: str):
    raise ValueError(f"{constant} is not a number JSON allows")


def parse_json(text: str, where: str, what: str):
    """JSON text, strictly: NaN and infinities (which Python's json accepts) are refused, and so are lone
    surrogates, which no tokenizer, hasher or UTF-8 writer downstream can take."""
    try:
        value = json.loads(text, parse_constant=_refuse_non_finite)
    except json.JSONDecodeError as exc:
        raise EmbenchError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno}): expected {what}") from None
    except ValueError as exc:
        raise EmbenchError(f"{where}: {exc}: expected {what}") from None
    if "\\ud" in text.lower():  # escapes only: a lone surrogate cannot be written in UTF-8 text itself
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise EmbenchError(f"{where}: a string holds a lone UTF-16 surrogate escape (\\udXXX), which is not "
                               f"text: expected {what}") from None
    return value


def read_json(path: Path, what: str):
    """A JSON file embench wrote; a file that is not one is named in one line (``what`` says what it should be)."""
    return parse_json(read_text(path, what), str(path), what)


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file that must hold one object (a record or a configuration); any other shape is one line."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise EmbenchError(f"{path}: expected a JSON object, got a {type(data).__name__}: this file should be {what}")
    return data


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


NAME_MAX = 255  # bytes in one file name on Linux file systems


def check_writable_folder(path: Path, flag: str = "--out", *, shown: Path | None = None) -> None:
    """Refuse, before any work, an output folder that cannot be made: a file in its place or above it, a name
    over the file-name limit, a first existing folder above it that is not writable. ``shown``: the path the user
    gave, when ``path`` is the folder it is written into."""
    shown = Path(path) if shown is None else Path(shown)
    long = next((part for part in shown.parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None:
        raise EmbenchError(f"{flag} {shown}: the name '{long[:40]}...' is over {NAME_MAX} bytes: choose a shorter one")
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == shown.absolute() else f"lies under {existing}, which is a file"
        raise EmbenchError(f"{flag} {shown} {where}, not a folder: choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EmbenchError(f"{flag} {shown}: {existing} is not writable: choose another {flag}")


def check_writable_file(path: Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output file that cannot be written: a folder in its place, or a folder to hold it
    that cannot be made (see :func:`check_writable_folder`)."""
    if Path(path).is_dir():
        raise EmbenchError(f"{flag} {path} is a folder: give a file name")
    check_writable_folder(Path(path).parent, flag, shown=path)


def check_output_folder(path: Path, record_name: str, fingerprint: str, kind: str, other: str) -> None:
    """An output folder may be missing, empty but for its lock, or hold the record of the very same job (it then
    resumes); a folder of anything else is refused. ``kind``: what the folder should be ("a training folder");
    ``other``: what a record of another fingerprint holds ("a different training run (...)")."""
    check_writable_folder(path)
    if not path.exists():
        return
    record = path / record_name
    if not path.is_dir() or (not record.is_file() and any(p.name not in (LOCK_FILE, LIBRARY_LOG_FILE)
                                                          for p in path.iterdir())):
        raise EmbenchError(f"--out {path} exists and is not {kind}: choose another --out")
    if record.is_file():
        found = read_json_object(record, f"the record of {kind}")
        if found.get("fingerprint") != fingerprint:
            raise EmbenchError(f"{path} holds {other}: use another --out, or delete it")


MAX_YAML_NODES = 1_000_000  # after alias expansion: far above any task or judge file, far below an alias bomb


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (plain YAML keeps the last silently) and a document
    whose aliases expand past MAX_YAML_NODES nodes (a few lines of anchors can stand for billions)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice (first on line {seen[key] + 1})", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def compose_document(self):
        document = super().compose_document()
        sizes: dict[int, int] = {}

        def expanded(node) -> int:
            if id(node) not in sizes:
                sizes[id(node)] = 0  # a recursive alias counts once instead of looping
                children = (node.value if isinstance(node, yaml.SequenceNode) else
                            [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else [])
                sizes[id(node)] = min(1 + sum(expanded(child) for child in children), MAX_YAML_NODES + 1)
            return sizes[id(node)]

        if document is not None and expanded(document) > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"its aliases expand to more than {MAX_YAML_NODES:,} nodes", document.start_mark)
        return document


def parse_yaml_document(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data of one YAML document, with parse_yaml's checks."""
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader checks the characters already here
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise EmbenchError(f"{where}{line}: YAML syntax error ({getattr(exc, 'problem', None) or exc})") from None
    except RecursionError:
        raise EmbenchError(f"{where}: YAML nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_yaml(text: str, where: str):
    """YAML text, strictly: duplicate keys and alias bombs are refused; every problem is one line."""
    return parse_yaml_document(text, where)[1]


def read_yaml(path: Path, what: str = "YAML"):
    return parse_yaml(read_text(path, what), str(path))


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


def jsonl_lines(text: str) -> list[str]:
    """The lines of JSON Lines text (none in an empty one). They end at a newline only: a JSON string may hold
    U+2028, U+2029 or U+0085 unescaped, where ``str.splitlines`` would cut a line in two."""
    return text.removesuffix("\n").split("\n") if text else []


def read_jsonl(path: Path, what: str) -> list[tuple[int, Any]]:
    """Each non-empty line of a JSON Lines file parsed, with its line number; a problem names file and line."""
    return [(number, parse_json(line, f"{path}:{number}", what))
            for number, line in enumerate(jsonl_lines(read_text(path, what)), start=1) if line.strip()]


def read_jsonl_models(path: Path, model: type[Model], fields: str) -> list[tuple[int, Model]]:
    """Each non-empty line of a JSON Lines file validated as ``model``, with its line number; every problem is one
    line naming file and line (``fields`` lists the expected fields for the message about non-objects)."""
    items = []
    for number, data in read_jsonl(path, f"JSON Lines ({fields})"):
        if not isinstance(data, dict):
            raise EmbenchError(f"{path}:{number}: each line must be a JSON object ({fields})")
        items.append((number, validated(model, data, f"{path}:{number}", whole="(line)")))
    return items
