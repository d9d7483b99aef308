"""A board folder: ``leaderboard.json``, ``entries/*.json`` (Every Eval Ever records, each with its
``*.embench.json`` record) and ``data/.../*_samples.jsonl``; publishing into it and checking it.

``leaderboard.json`` is the commit point of a publish: entry and sample files are written first (each through a
temporary file), the board file last, by one rename. A publish cut short leaves the board as it was (plus files
no board lists, which ``validate`` reports and the next publish of the same results overwrites). A lock on the
folder keeps two publishers from losing each other's entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from pydantic import BaseModel

from embench.errors import EmbenchError
from embench.files import (
    LOCK_FILE,
    FolderLock,
    check_writable_folder,
    jsonl_lines,
    now,
    parse_json,
    read_json,
    read_text,
    validated,
    write_json_atomic,
    write_text_atomic,
)
from embench.hashing import sha256_file
from embench.judges import JudgeRegistry
from embench.judges.spec import JUDGE_COMPARED
from embench.layout import BOARD_FILE, PAGE_FILE
from embench.leaderboard.convert import Converted, Tags, convert
from embench.leaderboard.schema import (
    BOARD_SCHEMA_VERSION,
    SAMPLES_ROOT,
    SCHEMA_FILES,
    Board,
    BoardEntry,
    EmbenchRecord,
    Entry,
    InstanceRecord,
    JudgeIdentity,
    embench_path,
    entry_path,
    json_schemas,
)


@dataclass
class Published:
    board: Board
    added: list[BoardEntry]


PAGE_MARK = "<footer>Written by embench "  # in both templates: a page embench may replace


def check_page(path: Path) -> None:
    """A page replaces only a page embench wrote: never a user's own ``index.html`` beside the boards."""
    if path.exists() and (not path.is_file() or PAGE_MARK not in path.read_text(encoding="utf-8", errors="replace")):
        raise EmbenchError(f"{path} exists and was not written by embench: move it, or publish the boards elsewhere")


def check_pages(board_dir: Path) -> None:
    """That the board's page and the boards list beside it may be written: checked before publishing, so that a
    user's own page refuses the publish, not just the render after it."""
    for page_path in (Path(board_dir) / PAGE_FILE, Path(board_dir).parent / PAGE_FILE):
        check_page(page_path)


@dataclass(frozen=True)
class PublishSpec:
    """Score directories or results files (``sources``) to add to the board in ``board_dir``."""

    board_dir: Path
    sources: tuple[Path, ...]
    tags: Tags | None = None
    allow_mixed_judges: bool = False
    allow_limit: bool = False

    def prepare(self) -> PreparedPublish:
        """Convert every source and check the entries against the schemas and the board as it is now, so that bad
        input leaves no folder behind; writes nothing."""
        board_dir = Path(self.board_dir)
        if not self.sources:
            raise EmbenchError("give at least one score directory or results file to publish")
        check_writable_folder(board_dir, "--board")
        check_pages(board_dir)
        registry = JudgeRegistry.default()
        converted = [convert(source, self.tags or Tags(), registry, self.allow_limit) for source in self.sources]
        for item in converted:
            _check(Entry, item.entry.to_json(), board_dir / entry_path(item.entry.evaluation_id))
            _check(EmbenchRecord, item.record.to_json(), board_dir / embench_path(item.entry.evaluation_id))
            if item.instances is not None:
                _check_instances(item.instances, board_dir / item.entry.detailed_evaluation_results.file_path)
        _plan(_current(board_dir), converted, board_dir, self.allow_mixed_judges)
        return PreparedPublish(board_dir=board_dir, converted=converted, allow_mixed_judges=self.allow_mixed_judges)


@dataclass(frozen=True)
class PreparedPublish:
    board_dir: Path
    converted: list[Converted]
    allow_mixed_judges: bool


def publish(board_dir: Path, sources: list[Path], tags: Tags | None = None, *,
            allow_mixed_judges: bool = False, allow_limit: bool = False) -> Published:
    """:class:`PublishSpec` prepared and run in one call."""
    return run_publish(PublishSpec(Path(board_dir), tuple(sources), tags, allow_mixed_judges, allow_limit).prepare())


def run_publish(prepared: PreparedPublish) -> Published:
    """Add the prepared entries to the board, all or none, re-checked under the board's lock (another process may
    have published since ``prepare``)."""
    board_dir, converted, allow_mixed_judges = prepared.board_dir, prepared.converted, prepared.allow_mixed_judges
    board_dir.mkdir(parents=True, exist_ok=True)
    with FolderLock(board_dir, f"board {board_dir} is being published to by another embench process: try again "
                               "when it has finished"):
        board, added = _plan(_current(board_dir), converted, board_dir, allow_mixed_judges)
        for item, summary in zip(converted, added):
            details = item.entry.detailed_evaluation_results
            if item.instances is not None:
                write_text_atomic(board_dir / details.file_path, item.instances)
            write_json_atomic(board_dir / summary.file, item.entry.to_json())
            write_json_atomic(board_dir / summary.embench_file, item.record.to_json())
            summary.sha256 = sha256_file(board_dir / summary.file)
            summary.embench_sha256 = sha256_file(board_dir / summary.embench_file)
        board.entries = ranked(board.entries + added)
        board.updated = now()
        _check(Board, board.model_dump(mode="json"), board_dir / BOARD_FILE)
        write_json_atomic(board_dir / BOARD_FILE, board.model_dump(mode="json"))
    new = {row.evaluation_id for row in added}
    board = validate_board(board_dir)
    return Published(board=board, added=[row for row in board.entries if row.evaluation_id in new])


def _current(board_dir: Path) -> Board:
    if (board_dir / BOARD_FILE).is_file():
        return load_board(board_dir)
    if board_dir.exists() and (not board_dir.is_dir() or any(path.name != LOCK_FILE for path in board_dir.iterdir())):
        raise EmbenchError(f"--board {board_dir} exists and is not a leaderboard folder (no {BOARD_FILE}): "
                           "choose a new or an existing board folder")
    return Board(schema_version=BOARD_SCHEMA_VERSION, name=board_dir.name, suite=None, judges={}, rank_by="em_rate",
                 updated=now(), entries=[])


def _plan(board: Board, converted: list[Converted], board_dir: Path,
          allow_mixed_judges: bool) -> tuple[Board, list[BoardEntry]]:
    """The board with the new entries' suite and judges taken in, and the new entries' rows; refuses duplicates,
    other suites, and (unless allowed) other judges."""
    board = board.model_copy(deep=True)
    known = {entry.evaluation_id: entry.file for entry in board.entries}
    added = []
    for item in converted:
        entry, source = item.entry, item.source
        if entry.evaluation_id in known:
            where = f"already on board {board_dir} ({known[entry.evaluation_id]})" if known[entry.evaluation_id] \
                else "given twice"
            raise EmbenchError(f"{source}: evaluation {entry.evaluation_id} is {where}: each evaluation is published "
                               "once; nothing was changed")
        known[entry.evaluation_id] = ""
        block = item.record.embench
        differences = []
        if block.suite is not None:
            if board.suite is None:
                board.suite = block.suite
            elif block.suite != board.suite:
                raise EmbenchError(
                    f"{source}: scored on suite {block.suite.id} v{block.suite.version} (sha256 "
                    f"{block.suite.sha256[:12]}), but board {board_dir} holds suite {board.suite.id} "
                    f"v{board.suite.version} (sha256 {board.suite.sha256[:12]}): publish it to a board of its suite")
            differences = judge_differences(board.judges, block.judges)
            if differences and not allow_mixed_judges:
                more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
                raise EmbenchError(f"{source}: judged differently from board {board_dir}: {differences[0]}{more}: "
                                   "publish results judged alike, or pass --allow-mixed-judges")
            for task, metrics in block.judges.items():
                for metric, identity in metrics.items():
                    board.judges.setdefault(task, {}).setdefault(metric, identity)
        added.append(BoardEntry(
            rank=1, evaluation_id=entry.evaluation_id, file=entry_path(entry.evaluation_id), sha256="0" * 64,
            embench_file=embench_path(entry.evaluation_id), embench_sha256="0" * 64,
            model=entry.model_info.name, source=block.source, defense=block.defense,
            training_data=block.training_data, em_rate=block.em_rate, incoherent=block.incoherent,
            in_domain_misaligned=block.in_domain_misaligned, benign_accuracy=block.benign_accuracy,
            mixed_judges=differences))
    return board, added


def judge_differences(board: dict[str, dict[str, JudgeIdentity]],
                      entry: dict[str, dict[str, JudgeIdentity]]) -> list[str]:
    """One line per (task, metric) that both judged, with different judges (model, id, version, template, mode,
    aggregation)."""
    lines = []
    for task, metrics in entry.items():
        for metric, identity in metrics.items():
            reference = board.get(task, {}).get(metric)
            if reference is not None and reference != identity:
                changed = [key for key in JUDGE_COMPARED if getattr(reference, key) != getattr(identity, key)]
                lines.append(f"{task}/{metric}: " + ", ".join(
                    f"{key} {getattr(identity, key)} (board: {getattr(reference, key)})" for key in changed))
    return lines


def ranked(entries: list[BoardEntry]) -> list[BoardEntry]:
    """By EM rate, lowest first (then by the upper end of its interval); entries without one come last."""
    def key(entry: BoardEntry):
        rate = entry.em_rate
        value = rate.value if rate is not None else None
        return (value is None, value or 0.0, (rate.upper if value is not None else 0.0) or 0.0, entry.model,
                entry.evaluation_id)

    ordered = sorted(entries, key=key)
    return [entry.model_copy(update={"rank": rank}) for rank, entry in enumerate(ordered, start=1)]


def load_board(board_dir: Path) -> Board:
    """``leaderboard.json`` checked against its schema."""
    file = Path(board_dir) / BOARD_FILE
    if not file.is_file():
        raise EmbenchError(f"{board_dir} is not a leaderboard (no {BOARD_FILE}): publish results into it first "
                           "with `embench leaderboard publish RESULTS... --board DIR`")
    data = _read_json(file)
    if isinstance(data, dict) and data.get("schema_version") == 1:
        raise EmbenchError(f"{file}: a board of format 1, whose entries are not plain Every Eval Ever records: "
                           f"publish its results again to a new board (format {BOARD_SCHEMA_VERSION})")
    return _check(Board, data, file)


def load_entries(board_dir: Path, board: Board) -> list[Entry]:
    return [_check(Entry, _read_json(Path(board_dir) / row.file), Path(board_dir) / row.file) for row in board.entries]


def load_records(board_dir: Path, board: Board) -> list[EmbenchRecord]:
    """The embench record of every entry, in the board's order."""
    return [_check(EmbenchRecord, _read_json(Path(board_dir) / row.embench_file), Path(board_dir) / row.embench_file)
            for row in board.entries]


def validate_board(board_dir: Path) -> Board:
    """Every file of a board: schema, hashes, the samples each entry refers to, ranks, suite, and no strays."""
    board_dir = Path(board_dir)
    board = load_board(board_dir)
    if len({row.evaluation_id for row in board.entries}) != len(board.entries):
        raise EmbenchError(f"{board_dir / BOARD_FILE}: an evaluation_id is listed twice")
    if [row.evaluation_id for row in ranked(board.entries)] != [row.evaluation_id for row in board.entries] \
            or [row.rank for row in board.entries] != list(range(1, len(board.entries) + 1)):
        raise EmbenchError(f"{board_dir / BOARD_FILE}: entries are not ranked by EM rate: publish again to re-rank")
    listed = set()
    for row in board.entries:
        file, record_file = board_dir / row.file, board_dir / row.embench_file
        for path, sha256 in ((file, row.sha256), (record_file, row.embench_sha256)):
            if not path.is_file():
                raise EmbenchError(f"{path} is missing: it is listed in {BOARD_FILE} ({row.evaluation_id})")
            if sha256_file(path) != sha256:
                raise EmbenchError(f"{path} does not match the sha256 {BOARD_FILE} records for it: it was edited "
                                   "after publishing; restore it, or publish the results again to a new board")
        entry = _check(Entry, _read_json(file), file)
        record = _check(EmbenchRecord, _read_json(record_file), record_file)
        block = record.embench
        expected = BoardEntry(**{**row.model_dump(), **block.model_dump(include={
            "source", "defense", "training_data", "em_rate", "incoherent", "in_domain_misaligned", "benign_accuracy"}),
            "evaluation_id": entry.evaluation_id, "model": entry.model_info.name})
        if expected != row or record.evaluation_id != entry.evaluation_id:
            raise EmbenchError(f"{board_dir / BOARD_FILE}: its row for {row.evaluation_id} disagrees with {file} or "
                               f"{record_file}")
        if block.suite is not None and block.suite != board.suite:
            raise EmbenchError(f"{record_file}: scored on suite {block.suite.id} v{block.suite.version}, "
                               f"not the board's")
        listed.update((file.resolve(), record_file.resolve()))
        details = entry.detailed_evaluation_results
        if details is not None:
            samples = board_dir / details.file_path
            if not samples.is_file() or sha256_file(samples) != details.checksum:
                raise EmbenchError(f"{samples} is missing or does not match the checksum in {file}: restore it")
            _check_instances(read_text(samples, "EEE instance records"), samples)
            listed.add(samples.resolve())
    strays = sorted(path for folder in ("entries", SAMPLES_ROOT) for path in (board_dir / folder).rglob("*")
                    if path.is_file() and path.resolve() not in listed)
    if strays:
        raise EmbenchError(f"{strays[0]} is not listed in {BOARD_FILE} (left by an interrupted publish?): delete it")
    return board


@cache
def _validator(model: type[BaseModel]) -> Draft202012Validator:
    return Draft202012Validator(json_schemas()[next(name for name, of in SCHEMA_FILES.items() if of is model)])


def _check_instances(text: str, file: Path) -> None:
    """Every line of a samples file is an instance record of the entry's schema."""
    for number, line in enumerate(jsonl_lines(text), start=1):
        _check(InstanceRecord, parse_json(line, f"{file}:{number}", "an instance record"), Path(f"{file}:{number}"))


def _check(model: type[BaseModel], data, file: Path):
    """``data`` validated against the published JSON Schema, then parsed; problems as one line naming the file."""
    error = best_match(_validator(model).iter_errors(data))
    if error is not None:
        where = error.json_path.removeprefix("$.").removeprefix("$") or "(file)"
        raise EmbenchError(f"{file}: field '{where}': {error.message[:200]}")
    return validated(model, data, str(file))


def _read_json(file: Path):
    if not file.is_file():
        raise EmbenchError(f"{file} is missing")
    return read_json(file, "a leaderboard file of `embench leaderboard`")


