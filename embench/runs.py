"""Run directories: ``run.json`` (config and provenance) plus append-only JSONL records keyed by content hash.

Records are appended one line per write and reach the kernel at once, so ``kill -9`` loses at most the work in
flight; a torn last line (a write cut short) is detected and dropped when the run is reopened. A re-run of
the same command on the same directory skips every key already present.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

import embench
from embench.errors import EmbenchError
from embench.files import (
    FolderLock,
    check_output_folder,
    embench_git_sha,
    now,
    parse_json,
    read_json_object,
    validated,
    write_json_atomic,
)
from embench.layout import GENERATIONS_FILE, JUDGMENTS_FILE, RUN_FILE
from embench.prompts import Message


class Generation(BaseModel):
    """One sample: a line of ``generations.jsonl``."""

    key: str
    prompt_id: str
    sample_index: int
    seed: int
    messages: tuple[Message, ...]
    prompt_sha256: str | None  # of the rendered prompt; None where a remote endpoint renders it
    completion: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    metadata: dict = {}
    created: str


def load_records(path: Path, *, repair: bool = False) -> dict[str, dict]:
    """The latest record per key of a JSONL log. A torn last line is skipped, and cut off when ``repair``."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    records: dict[str, dict] = {}
    good_end = 0
    lines = data.split(b"\n")
    # The element after the final newline is empty; anything else there is a line cut off mid-write.
    for number, line in enumerate(lines[:-1], start=1):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines) - 1:
                break  # the last line: an interrupted write
            raise EmbenchError(f"{path}:{number}: corrupt line in the middle of the file; "
                               "it was not written by embench: restore or delete the file") from None
        if b"\\u" in line or b"NaN" in line or b"Infinity" in line:  # what Python's json lets through: refuse it
            parse_json(line.decode("utf-8"), f"{path}:{number}", "a record of embench")
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            raise EmbenchError(f"{path}:{number}: not a record of embench (a JSON object with a 'key'); this file "
                               "was not written by embench: restore or delete it")
        records[record["key"]] = record  # a key written again (a retried failure) takes its latest record
        good_end += len(line) + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
    return records


class JsonlLog:
    """An append-only JSONL file of records that each carry a unique ``key``."""

    def __init__(self, path: Path):
        self.path = path
        self.records = load_records(path, repair=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        os.write(self._fd, line)  # one write of one whole line: nothing buffered in this process
        self.records[record["key"]] = record

    def close(self) -> None:
        os.close(self._fd)


def lock_run(path: Path) -> FolderLock:
    """Hold a run directory against any other embench writer (generation or judging) until closed."""
    return FolderLock(path, f"run directory {path} is in use by another embench process")


class RunDirectory:
    """A run's folder, locked against a second writer while open."""

    def __init__(self, path: Path, config: dict, fingerprint: str):
        self.path = path
        self._lock = lock_run(path)
        try:
            self.check_target(path, fingerprint)
        except EmbenchError:
            self._lock.close()
            raise
        previous = read_run_record(path) if (path / RUN_FILE).is_file() else None
        self.record = previous or {"embench_version": embench.__version__, "fingerprint": fingerprint,
                                   "created": now(), "attempts": []}
        self.record.update(config=config, embench_git_sha=embench_git_sha())
        self.generations = JsonlLog(path / GENERATIONS_FILE)

    @staticmethod
    def check_target(path: Path, fingerprint: str) -> None:
        """A run may go into a missing or empty folder, or resume in a folder that holds the same run."""
        check_output_folder(path, RUN_FILE, fingerprint, "an embench run directory",
                            "a different run (other model, engine, sampling or prompts)")

    def start(self, engine_info: dict) -> None:
        self.record["attempts"].append({"started": now(), "engine": engine_info, "resumed_with": len(self.generations)})
        self.set_status("running")

    def set_status(self, status: str, **fields: Any) -> None:
        self.record["status"] = status
        self.record["attempts"][-1].update(status=status, **fields)
        if status != "running":
            self.record["attempts"][-1]["finished"] = now()
        write_json_atomic(self.path / RUN_FILE, self.record)

    def release(self) -> None:
        self.generations.close()
        self._lock.close()

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


class Judgment(BaseModel):
    """One judgment: a line of ``judgments.jsonl``; the judge's identity fields sit beside these."""

    model_config = ConfigDict(extra="allow")

    key: str
    generation_key: str
    judge_id: str
    status: Literal["ok", "failed"]
    score: float | None = None
    verdict: str | None = None


class RunRecord(BaseModel):
    """``run.json``: what a run directory holds (its fingerprint and config) and each attempt at it."""

    model_config = ConfigDict(extra="allow")

    fingerprint: str
    created: str
    attempts: list[dict[str, Any]]
    config: dict[str, Any]
    status: str | None = None


def read_run_record(path: Path) -> dict:
    """The ``run.json`` of a run directory as written, after checking it has the shape of :class:`RunRecord`."""
    file = path / RUN_FILE
    record = read_json_object(file, "an embench run record")
    validated(RunRecord, record, f"{file}: not an embench run record")
    return record


def read_judgments(path: Path) -> dict[str, dict]:
    """The latest judgment per key of a run directory, each checked for its shape."""
    records = load_records(path / JUDGMENTS_FILE)
    for record in records.values():
        validated(Judgment, record, f"{path / JUDGMENTS_FILE} (key {record['key'][:16]})", whole="(record)")
    return records


def read_generations(path: Path) -> Iterator[Generation]:
    """Every generation of a run directory (for judging and scoring)."""
    for record in load_records(path / GENERATIONS_FILE).values():
        yield validated(Generation, record, f"{path / GENERATIONS_FILE} (key {record['key'][:16]})", whole="(record)")
