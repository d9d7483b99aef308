"""``embench reproduce``: the in-training defenses compared on the same data, seeds and evaluation.

A preset (``tasks/reproduce/<id>.yaml``, or any file) names a base model, training datasets (each with the narrow
task that probes its own domain), defenses with their arguments, seeds, trainer hyper-parameters and how to score.
Every cell of datasets x defenses x seeds is trained, scored on one suite (the preset's suite, every dataset's
in-domain probe and the benign task) and published to a leaderboard; the base model, untrained, is scored once on
the same suite as the reference. The output folder holds

- ``reproduce.json``: the preset, the judge and the fingerprint of both (a folder holding another is refused);
- ``suite.yaml``: the suite every cell is scored on;
- ``base/`` and ``cells/<dataset>/<defense>/seed-<s>/``: ``adapter/`` (the training run), ``score/`` (the score
  directory) and ``cell.json``, written last and atomically: a cell with it is finished and never run again. A
  cell cut short resumes through the trainer's checkpoints and the score directory's finished samples;
- ``leaderboard/<preset id>/``: a board with every finished cell as an entry, tagged with its defense and dataset;
- ``comparison.json``, ``comparison.md``, ``comparison.png``: per dataset and defense, general EM %, general
  incoherent %, in-domain misaligned %, in-domain incoherent % and benign accuracy with 95% intervals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import embench
from embench.engines.base import KV_CACHE_GIB
from embench.errors import EmbenchError
from embench.files import (
    check_output_folder,
    check_writable_folder,
    embench_git_sha,
    field_error,
    first_error,
    now,
    read_json,
    read_yaml,
    write_json_atomic,
    write_text_atomic,
)
from embench.hashing import file_safe, sha256_file, sha256_json
from embench.judges.scoring import JUDGE_MODES
from embench.judges.settings import JudgeSettings, judge_settings
from embench.layout import (
    BOARD_FILE,
    CELL_FILE,
    REPRODUCE_BOARD_DIR,
    REPRODUCE_FILE,
    RESULTS_FILE,
    SUITE_FILE,
    TRAIN_FILE,
    FolderId,
)
from embench.metrics import format_estimate, pool_estimates
from embench.results import EM_RATE, IN_DOMAIN_RATE, INCOHERENT_RATE, OOD, ScoreResults, TrainRecord
from embench.runs import lock_run
from embench.tasks import Suite, Task, find_suite, tasks_dir
from embench.train.config import DefenseSpec, TrainConfig
from embench.train.data import GENERATED_PREFIX

PRESETS_DIR = "reproduce"
COMPARISON = "comparison"
BASE_DEFENSE = "base model"  # the reference row: the preset's model, untrained
CELL_FIELDS = {"model", "data", "data_size", "defenses", "seed"}  # set per cell, never in a preset's ``train``
METRICS = {  # name -> (column label, what it is)
    "general_em": ("general EM %", "misaligned % pooled over the suite's ood tasks (each task's misaligned rule)"),
    "general_incoherent": ("general incoherent %",
                           "incoherent % pooled over the suite's ood tasks (each task's incoherent rule)"),
    "in_domain_misaligned": ("in-domain misaligned %",
                             "misaligned % on the dataset's own probe (its in_domain_misaligned rule)"),
    "in_domain_incoherent": ("in-domain incoherent %", "incoherent % on the dataset's own probe (its incoherent rule)"),
    "benign_accuracy": ("benign accuracy %", "exact-match accuracy on the benign task"),
}
INTERVALS = ("Wilson 95% intervals over the samples of every seed pooled (seed-to-seed variation is not in them); "
             "null: no usable sample (the excluded counts say why), never 0")

Status = Callable[[str, int, int | None], None]  # (what is happening, done, total)


class DatasetEntry(BaseModel):
    """One training dataset of the matrix and the narrow task probing its domain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # the cells' folder and the board's data tag
    data: str  # generated:NAME, or a messages JSONL file (relative to the preset file)
    size: int | None = Field(None, ge=1)  # examples to generate or sample; None: all / the generator's default
    probe: str | None = None  # a narrow task id or task file (relative to the preset file); None: no in-domain probe


class DefenseEntry(BaseModel):
    """A defense of the matrix with its arguments (the trainer's own names and defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    args: dict[str, Any] = Field(default_factory=dict)

    def spec(self) -> DefenseSpec:
        """The trainer's spec, every default filled in (as ``embench train --defense`` records it)."""
        from embench.train.defenses import DEFENSES

        if self.name not in DEFENSES:
            raise ValueError(f"unknown defense '{self.name}': choose from {', '.join(DEFENSES)}")
        try:
            args = DEFENSES[self.name].Args.model_validate(self.args)
        except ValidationError as exc:
            where, message = first_error(exc)
            raise ValueError(f"defense {self.name}, argument '{where}': {message}") from None
        return DefenseSpec(name=self.name, args=args.model_dump(mode="json", by_alias=True))


class ScoreSettings(BaseModel):
    """How every cell is scored; None means the suite's or task's own setting."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    suite: str = "em-core"  # a suite id, or a suite file (relative to the preset file)
    benign: str | None = "benign-opswap"  # the benign task id or file; None: no benign task
    samples: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    engine: Literal["vllm", "vllm-server", "hf"] = "vllm"
    dtype: Literal["float32", "bfloat16"] = "float32"
    kv_cache_gib: float = Field(KV_CACHE_GIB, gt=0)
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_mode: str | None = None
    judge_engine: Literal["hf", "vllm"] | None = None

    @field_validator("judge_mode")
    @classmethod
    def _known_mode(cls, mode: str | None) -> str | None:
        if mode is not None and mode not in JUDGE_MODES:
            raise ValueError(f"unknown judge mode '{mode}': choose one of {', '.join(JUDGE_MODES)}")
        return mode


class Preset(BaseModel):
    """A reproduction: the matrix, the trainer's hyper-parameters and the evaluation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: FolderId
    version: int = Field(ge=1)
    description: str = ""
    model: str = "default"
    datasets: tuple[DatasetEntry, ...] = Field(min_length=1)
    defenses: tuple[DefenseEntry, ...] = Field(min_length=1)
    seeds: tuple[int, ...] = Field(min_length=1)
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields other than CELL_FIELDS
    score: ScoreSettings = ScoreSettings()

    @model_validator(mode="after")
    def _consistent(self) -> "Preset":
        for what, names in (("dataset", [d.name for d in self.datasets]), ("defense", [d.name for d in self.defenses]),
                            ("seed", list(self.seeds))):
            if len(set(names)) < len(names):
                raise ValueError(f"a {what} is listed twice: {names}")
        for defense in self.defenses:
            defense.spec()
        if fixed := sorted(CELL_FIELDS & set(self.train)):
            raise ValueError(f"train.{fixed[0]} is set per cell by the matrix, not in 'train'")
        self.train_config(self.datasets[0], [], self.seeds[0])
        return self

    def train_config(self, dataset: DatasetEntry, defenses: list[DefenseSpec], seed: int,
                     folder: Path | None = None) -> TrainConfig:
        data = dataset.data
        if folder is not None and not data.startswith(GENERATED_PREFIX) and not Path(data).is_absolute():
            data = str(folder / data)
        try:
            return TrainConfig(model=self.model, data=data, data_size=dataset.size, defenses=defenses, seed=seed,
                               **self.train)
        except ValidationError as exc:
            where, message = first_error(exc)
            raise ValueError(f"train.{where}: {message}") from None


def find_preset(reference: str) -> tuple[Path, Preset]:
    """A preset by file path, or by id among ``tasks/reproduce/*.yaml``."""
    path = Path(reference)
    if path.suffix not in (".yaml", ".yml"):
        path = tasks_dir() / PRESETS_DIR / f"{reference}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (tasks_dir() / PRESETS_DIR).glob("*.yaml"))
            raise EmbenchError(f"unknown preset '{reference}' (known: {', '.join(known) or 'none'}; or give a "
                               "preset YAML file)")
    elif not path.is_file():
        raise EmbenchError(f"preset file {path} does not exist")
    try:
        preset = Preset.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise field_error(path, exc) from None
    return path.resolve(), preset


def listed(values: list[str]) -> list[str] | None:
    """``--defenses a,b --defenses c`` as ``[a, b, c]``; None when nothing was given."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()] or None


def parse_seeds(values: list[str]) -> list[int] | None:
    """``--seeds 0,1 --seeds 2`` as integers; None when nothing was given (the preset's seeds)."""
    seeds = listed(values) or []
    bad = [seed for seed in seeds if not seed.lstrip("-").isdigit()]
    if bad:
        raise EmbenchError(f"--seeds: '{bad[0]}' is not an integer (e.g. --seeds 0,1,2)")
    return [int(seed) for seed in seeds] or None


@dataclass
class ReproduceSpec:
    """What ``embench reproduce`` takes: a preset, optional subsets of its matrix, the output folder and the judge
    (None: the preset's setting)."""

    preset: str = "tiny"
    datasets: list[str] | None = None
    defenses: list[str] | None = None  # the preset's, or any other defense with its default arguments
    seeds: list[int] | None = None
    out: Path | None = None
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_mode: str | None = None
    judge_engine: str | None = None


@dataclass
class Cell:
    """One trained checkpoint of the matrix (``dataset`` None: the untrained base model, the reference)."""

    dataset: DatasetEntry | None
    defense: str
    seed: int | None
    folder: Path
    config: TrainConfig | None = None

    @property
    def label(self) -> str:
        return BASE_DEFENSE if self.dataset is None else f"{self.dataset.name}/{self.defense}/seed-{self.seed}"

    @property
    def adapter(self) -> Path:
        return self.folder / "adapter"

    @property
    def score_dir(self) -> Path:
        return self.folder / "score"

    @property
    def marker(self) -> Path:
        return self.folder / CELL_FILE

    @property
    def finished(self) -> bool:
        return self.marker.is_file()


@dataclass
class ReproducePlan:
    spec: ReproduceSpec
    preset: Preset
    preset_path: Path
    out: Path
    score: ScoreSettings  # the preset's, with the judge flags applied
    suite: dict  # the suite file every cell is scored on
    tasks: list[Task]
    probes: dict[str, str | None]  # dataset name -> its probe's task id
    benign: str | None  # the benign task's id
    base: Cell
    cells: list[Cell]
    fingerprint: str

    @property
    def board(self) -> Path:
        """``leaderboard/<preset id>``: the board's page names the preset; ``leaderboard/index.html`` lists it."""
        return self.out / REPRODUCE_BOARD_DIR / self.preset.id


@dataclass
class ReproduceResult:
    out: Path
    ran: list[str] = field(default_factory=list)
    finished_before: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    comparison: list[Path] = field(default_factory=list)


def plan_reproduce(spec: ReproduceSpec) -> ReproducePlan:
    """Check the preset, the chosen matrix, the suite and its judges; nothing is written."""
    from embench.judges import JudgeRegistry
    from embench.train.defenses import DEFENSES

    preset_path, preset = find_preset(spec.preset)
    folder = preset_path.parent
    datasets = list(preset.datasets)
    if (names := spec.datasets) is not None:
        known = {dataset.name: dataset for dataset in preset.datasets}
        if unknown := [name for name in names if name not in known]:
            raise EmbenchError(f"--datasets: '{unknown[0]}' is not a dataset of preset {preset.id} (its datasets: "
                               f"{', '.join(known)})")
        datasets = [known[name] for name in dict.fromkeys(names)]
    defenses = list(preset.defenses)
    if (names := spec.defenses) is not None:
        if unknown := [name for name in names if name not in DEFENSES]:
            raise EmbenchError(f"--defenses: unknown defense '{unknown[0]}': choose from {', '.join(DEFENSES)}")
        known = {defense.name: defense for defense in preset.defenses}
        defenses = [known.get(name, DefenseEntry(name=name)) for name in dict.fromkeys(names)]
    seeds = list(preset.seeds) if spec.seeds is None else list(dict.fromkeys(spec.seeds))
    if not (datasets and defenses and seeds):
        raise EmbenchError("the matrix is empty: give at least one dataset, defense and seed")
    updates = {key: value for key, value in (("judge_model", spec.judge_model), ("judge_base_url", spec.judge_base_url),
                                             ("judge_mode", spec.judge_mode), ("judge_engine", spec.judge_engine))
               if value is not None}
    try:
        score = ScoreSettings.model_validate({**preset.score.model_dump(), **updates})
    except ValidationError as exc:
        where, message = first_error(exc)
        raise EmbenchError(f"--{where.replace('_', '-')}: {message}") from None
    suite, tasks, probes, benign = _assemble_suite(preset, preset_path)
    registry = JudgeRegistry.default()
    settings = judge_settings([registry.get(judge) for task in tasks for judge in task.judges.values()],
                              model=score.judge_model, mode=score.judge_mode, base_url=score.judge_base_url,
                              engine=score.judge_engine)
    out = Path(spec.out) if spec.out is not None else Path("runs") / f"reproduce-{preset.id}"
    check_writable_folder(out)
    cells = []
    for dataset in datasets:
        for defense in defenses:
            for seed in seeds:
                try:
                    config = preset.train_config(dataset, [defense.spec()], seed, folder)
                except ValueError as exc:
                    raise EmbenchError(f"{dataset.name}/{defense.name}: {exc}") from None
                cells.append(Cell(dataset=dataset, defense=defense.name, seed=seed, config=config,
                                  folder=out / "cells" / dataset.name / file_safe(defense.name, keep="-_.+")
                                  / f"seed-{seed}"))
    fingerprint = sha256_json({"preset": preset.model_dump(mode="json"), "suite": suite,
                               "judge": judge_identity(score, settings)})
    plan = ReproducePlan(spec=spec, preset=preset, preset_path=preset_path, out=out, score=score, suite=suite,
                         tasks=tasks, probes=probes, benign=benign,
                         base=Cell(dataset=None, defense=BASE_DEFENSE, seed=None, folder=out / "base"), cells=cells,
                         fingerprint=fingerprint)
    _check_out(plan)
    return plan


def judge_identity(score: ScoreSettings, settings: JudgeSettings) -> dict:
    """What decides the judgments (a board refuses to mix them): the model and the mode, local or an endpoint. Not
    the endpoint's address: a judge server restarted on another port judges alike."""
    return {"judge_model": score.judge_model, "judge_mode": settings.mode, "endpoint": score.judge_base_url is not None}


def _task_reference(reference: str, folder: Path) -> str:
    """A task id as it is; a task file as an absolute path (suites resolve file entries against their own folder)."""
    return str((folder / reference).resolve()) if reference.endswith((".yaml", ".yml")) else reference


def _assemble_suite(preset: Preset, path: Path) -> tuple[dict, list[Task], dict[str, str | None], str | None]:
    """The preset's suite plus every dataset's probe and the benign task, as one suite (one board, one base row).

    Every dataset of the preset is in it, whichever a run selects, so that every run of a preset scores alike."""
    score, folder = preset.score, path.parent
    base_suite = find_suite(_task_reference(score.suite, folder))
    entries = [_task_reference(entry, base_suite._folder or folder) for entry in base_suite.tasks]
    probe_entries = {dataset.name: _task_reference(dataset.probe, folder) for dataset in preset.datasets
                     if dataset.probe is not None}
    benign_entry = _task_reference(score.benign, folder) if score.benign is not None else None
    entries = list(dict.fromkeys([*entries, *probe_entries.values(), *([benign_entry] if benign_entry else [])]))
    suite = {"id": f"reproduce-{preset.id}", "version": preset.version,
             "description": f"embench reproduce preset {preset.id}: suite {base_suite.id} v{base_suite.version}, "
                            "the datasets' in-domain probes and the benign task",
             "tasks": entries, "overrides": dict(base_suite.overrides)}
    tasks = Suite.model_validate(suite).load_tasks()
    by_entry = dict(zip(entries, tasks))
    if not any(task.family == "ood" and "misaligned" in task.rates for task in tasks):
        raise EmbenchError(f"{path}: suite {base_suite.id} has no ood task with a 'misaligned' rate: the general EM "
                           "rate needs one")
    probes: dict[str, str | None] = {dataset.name: None for dataset in preset.datasets}
    for name, entry in probe_entries.items():
        task = by_entry[entry]
        if task.family != "narrow" or "in_domain_misaligned" not in task.rates:
            raise EmbenchError(f"{path}: dataset {name}: probe {task.id} is not a narrow task with an "
                               "'in_domain_misaligned' rate")
        probes[name] = task.id
    benign = None
    if benign_entry is not None:
        task = by_entry[benign_entry]
        if task.family != "benign" or task.lm_eval is None:
            raise EmbenchError(f"{path}: score.benign: {task.id} is not a benign (lm-eval) task")
        benign = task.id
    return suite, tasks, probes, benign


def _check_out(plan: ReproducePlan) -> None:
    check_output_folder(plan.out, REPRODUCE_FILE, plan.fingerprint, "a reproduction folder",
                        "a reproduction with another preset, suite or judge")


# --- running ---------------------------------------------------------------------------------------------------


def run_reproduce(plan: ReproducePlan, progress: Status | None = None) -> ReproduceResult:
    """The base model, then every cell not finished yet; then the comparison over every finished cell."""
    say = progress or (lambda text, done, total: None)
    out = plan.out
    if plan.score.judge_base_url is not None:  # before hours of training, not at the first cell's judging
        from embench.judges.openai_backend import check_judge_endpoint

        check_judge_endpoint(plan.score.judge_base_url)
    lock = lock_run(out)
    try:
        _write_record(plan)
        result = ReproduceResult(out=out)
        for cell in [plan.base, *plan.cells]:
            if cell.finished:
                result.finished_before.append(cell.label)
                continue
            started = time.perf_counter()
            _run_cell(plan, cell, say)
            result.ran.append(cell.label)
            result.seconds[cell.label] = time.perf_counter() - started
        say("comparison", 0, None)
        result.comparison = write_comparison(plan)
        return result
    finally:
        lock.close()


def _write_record(plan: ReproducePlan) -> None:
    """``reproduce.json`` (once: it says what the folder holds) and ``suite.yaml`` (the same text every time)."""
    import yaml

    record = plan.out / REPRODUCE_FILE
    if not record.is_file():
        write_json_atomic(record, {
            "fingerprint": plan.fingerprint, "created": now(),
            "preset": {"id": plan.preset.id, "version": plan.preset.version, "file": str(plan.preset_path),
                       "sha256": sha256_file(plan.preset_path), "content": plan.preset.model_dump(mode="json")},
            "score": plan.score.model_dump(mode="json"), "suite": plan.suite,
            "embench_version": embench.__version__, "embench_git_sha": embench_git_sha()})
    text = (f"# Written by embench reproduce (preset {plan.preset.id}): every cell is scored on this suite.\n"
            + yaml.safe_dump(plan.suite, sort_keys=False))
    write_text_atomic(plan.out / SUITE_FILE, text)


def _run_cell(plan: ReproducePlan, cell: Cell, say: Status) -> None:
    """Train (the trainer resumes or finds its run complete), score (resumes), publish, then write the marker."""
    from embench.leaderboard import Tags
    from embench.train.trainer import train

    record: dict[str, Any] = {"cell": cell.label, "dataset": cell.dataset.name if cell.dataset else None,
                              "defense": cell.defense, "seed": cell.seed, "started": now()}
    if cell.config is not None:
        started = time.perf_counter()
        trained = train(cell.config, cell.adapter,
                        progress=lambda text, done, total: say(f"{cell.label}: {text}", done, total))
        train_record = TrainRecord.load(cell.adapter / TRAIN_FILE)
        record["train"] = {"out": cell.adapter.relative_to(plan.out).as_posix(), "steps": trained.total_steps,
                           "final_loss": trained.final_loss, "fingerprint": train_record.fingerprint,
                           "data_sha256": train_record.data.sha256, "seconds": time.perf_counter() - started}
    started = time.perf_counter()
    results_path = _score(plan, str(cell.adapter) if cell.config is not None else plan.preset.model, cell, say).results_path
    record["score"] = {"out": cell.score_dir.relative_to(plan.out).as_posix(),
                       "results_sha256": sha256_file(results_path), "seconds": time.perf_counter() - started}
    say(f"{cell.label}: publishing", 0, None)
    tags = Tags(defense=cell.defense, training_data=cell.dataset.name if cell.dataset else None,
                organization="embench reproduce")
    record["leaderboard"] = {"evaluation_id": _publish(plan.board, cell.score_dir, tags)}
    record["finished"] = now()
    write_json_atomic(cell.marker, record)


def _score(plan: ReproducePlan, checkpoint: str, cell: Cell, say: Status):
    from embench.engines import EngineOptions
    from embench.score import ScoreSpec, prepare_score, run_score

    score = plan.score
    spec = ScoreSpec(checkpoint=checkpoint, suite=str(plan.out / SUITE_FILE), samples=score.samples,
                     max_tokens=score.max_tokens, engine=score.engine, judge_model=score.judge_model,
                     judge_base_url=score.judge_base_url, judge_mode=score.judge_mode, judge_engine=score.judge_engine,
                     out=cell.score_dir, options=EngineOptions(kv_cache_gib=score.kv_cache_gib, dtype=score.dtype))
    return run_score(prepare_score(spec), status=lambda text, done, total: say(f"{cell.label}: {text}", done, total))


def _publish(board: Path, score_dir: Path, tags) -> str:
    """Publish one score directory, unless an earlier run, stopped before its marker, already did."""
    from embench.leaderboard import convert, load_board, publish, render_board

    evaluation_id = convert(score_dir, tags).entry.evaluation_id
    if (board / BOARD_FILE).is_file() and evaluation_id in {row.evaluation_id for row in load_board(board).entries}:
        return evaluation_id
    publish(board, [score_dir], tags)
    render_board(board)
    return evaluation_id


# --- the comparison --------------------------------------------------------------------------------------------


def _finished_cells(plan: ReproducePlan) -> list[Cell]:
    """Every finished cell under the output folder (earlier runs' selections included), in the preset's order."""
    datasets = {dataset.name: dataset for dataset in plan.preset.datasets}
    order = [defense.name for defense in plan.preset.defenses]
    cells = []
    for marker in sorted((plan.out / "cells").glob(f"*/*/seed-*/{CELL_FILE}")):
        record = read_json(marker, f"the {CELL_FILE} of a finished `embench reproduce` cell")
        try:
            cells.append(Cell(dataset=datasets[record["dataset"]], defense=record["defense"], seed=int(record["seed"]),
                              folder=marker.parent))
        except (KeyError, TypeError, ValueError):
            raise EmbenchError(f"{marker}: not the record of a cell of this preset (dataset, defense, seed): delete "
                               f"{marker.parent} to run that cell again") from None
    dataset_order = list(datasets)
    return sorted(cells, key=lambda c: (dataset_order.index(c.dataset.name),
                                        order.index(c.defense) if c.defense in order else len(order), c.defense,
                                        c.seed))


def cell_metrics(results: ScoreResults, probe: str | None, benign: str | None) -> dict[str, list[dict]]:
    """The parts each comparison metric pools, from one ``results.json``: the ood tasks' rates (the headline
    EM rate's parts), the dataset's own probe, the benign task."""
    ood, probes = results.tasks_of(OOD), [probe] if probe else []
    return {
        "general_em": results.parts(EM_RATE, ood),
        "general_incoherent": results.parts(INCOHERENT_RATE, ood),
        "in_domain_misaligned": results.parts(IN_DOMAIN_RATE, probes),
        "in_domain_incoherent": results.parts(INCOHERENT_RATE, probes),
        "benign_accuracy": [results.results[benign]] if benign and "accuracy" in results.results.get(benign, {})
        else [],
    }


def _pool(parts: list[dict]) -> dict | None:
    pooled = pool_estimates(parts)
    return None if pooled is None else pooled.model_dump()


def comparison_rows(plan: ReproducePlan) -> tuple[list[dict], list[dict]]:
    """(rows per dataset and defense, seeds pooled, the base model first; one row per finished cell)."""

    def results_of(cell: Cell) -> ScoreResults:
        path = cell.score_dir / RESULTS_FILE
        if not path.is_file():
            raise EmbenchError(f"{cell.marker} says {cell.label} is finished, but {path} is missing: delete "
                               f"{cell.marker} to run the cell again")
        return ScoreResults.load(path)

    cells = _finished_cells(plan)
    base = results_of(plan.base) if plan.base.finished else None
    rows, cell_rows = [], []
    for dataset in plan.preset.datasets:
        probe = plan.probes[dataset.name]
        groups: dict[str, list[tuple[Cell, dict]]] = {}
        if base is not None:
            groups[BASE_DEFENSE] = [(plan.base, cell_metrics(base, probe, plan.benign))]
        for cell in cells:
            if cell.dataset.name == dataset.name:
                parts = cell_metrics(results_of(cell), probe, plan.benign)
                groups.setdefault(cell.defense, []).append((cell, parts))
                cell_rows.append({"cell": cell.label, "dataset": dataset.name, "defense": cell.defense,
                                  "seed": cell.seed, "folder": cell.folder.relative_to(plan.out).as_posix(),
                                  **{name: _pool(value) for name, value in parts.items()}})
        for defense, members in groups.items():
            rows.append({"dataset": dataset.name, "probe": probe, "defense": defense,
                         "seeds": [cell.seed for cell, _ in members if cell.seed is not None],
                         **{name: _pool([part for _, parts in members for part in parts[name]]) for name in METRICS}})
    return rows, cell_rows


def write_comparison(plan: ReproducePlan) -> list[Path]:
    """``comparison.json``, ``.md`` and ``.png`` over every finished cell; returns their paths."""
    rows, cell_rows = comparison_rows(plan)
    paths = [plan.out / f"{COMPARISON}.{suffix}" for suffix in ("json", "md", "png")]
    board = plan.board
    write_json_atomic(paths[0], {
        "preset": {"id": plan.preset.id, "version": plan.preset.version, "sha256": sha256_file(plan.preset_path)},
        "suite": {key: plan.suite[key] for key in ("id", "version", "tasks")},
        "judge": plan.score.model_dump(include={"judge_model", "judge_base_url", "judge_mode", "judge_engine"}),
        "metrics": {name: description for name, (_, description) in METRICS.items()}, "intervals": INTERVALS, "leaderboard": board.relative_to(plan.out).as_posix(),
        "updated": now(), "rows": rows, "cells": cell_rows})
    paths[1].write_text(comparison_markdown(plan, rows), encoding="utf-8")
    _plot(rows, paths[2])
    return paths


def comparison_markdown(plan: ReproducePlan, rows: list[dict]) -> str:
    judge = plan.score.judge_model or "the judges' default model"
    lines = [f"# embench reproduce: preset {plan.preset.id} v{plan.preset.version}", "",
             f"Model {plan.preset.model}; suite `{plan.suite['id']}` ({', '.join(task.id for task in plan.tasks)}); "
             f"judge {judge}{' at ' + plan.score.judge_base_url if plan.score.judge_base_url else ''}. "
             f"Percentages with {INTERVALS}; '-': the dataset has no such task.", ""]
    for dataset in plan.preset.datasets:
        probe = plan.probes[dataset.name]
        lines += [f"## {dataset.name} ({dataset.data}; in-domain probe: {probe or 'none'})", "",
                  "| defense | seeds | " + " | ".join(label for label, _ in METRICS.values()) + " |",
                  "|---" * (len(METRICS) + 2) + "|"]
        for row in rows:
            if row["dataset"] == dataset.name:
                seeds = ", ".join(map(str, row["seeds"])) or "-"
                lines.append(f"| {row['defense']} | {seeds} | "
                             + " | ".join(format_estimate(row[name]) for name in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    """One panel per metric, one row per dataset and defense: the value with its 95% interval, or 'null'."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI or servers
    import matplotlib.pyplot as plt

    labels = [f"{row['dataset']}: {row['defense']}" for row in rows]
    figure, axes = plt.subplots(1, len(METRICS), sharey=True, squeeze=False,
                                figsize=(3.2 * len(METRICS) + 2, max(2.5, 0.35 * len(rows) + 1.5)))
    for axis, name in zip(axes[0], METRICS):
        for position, row in enumerate(rows):
            estimate = row[name]
            if estimate is None or estimate["value"] is None:
                text = format_estimate(estimate)
                axis.text(0.02, position, text, va="center", fontsize=7, color="grey")
                continue
            value, lower, upper = (100 * estimate[key] for key in ("value", "lower", "upper"))
            axis.errorbar(value, position, xerr=[[value - lower], [upper - value]], fmt="o", capsize=3,
                          color="black" if row["defense"] == BASE_DEFENSE else "tab:blue")
        axis.set(xlim=(-2, 102), title=METRICS[name][0], xlabel="with its 95% interval")
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(rows)), labels, fontsize=8)
    axes[0][0].invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
