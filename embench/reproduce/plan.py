"""The preset schema, the matrix of cells it spans, and the plan a reproduction runs (checked, nothing written)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from embench.engines.base import KV_CACHE_GIB, EngineOptions
from embench.errors import EmbenchError
from embench.files import check_output_folder, check_writable_folder, field_error, first_error, read_yaml
from embench.hashing import file_safe, sha256_json
from embench.judges.scoring import JUDGE_MODES
from embench.judges.settings import JudgeSettings, judge_settings
from embench.layout import CELL_FILE, REPRODUCE_BOARD_DIR, REPRODUCE_FILE, FolderId
from embench.tasks import Suite, Task, find_suite, tasks_dir
from embench.train.config import DefenseSpec, TrainConfig
from embench.train.data import GENERATED_PREFIX

PRESETS_DIR = "reproduce"
BASE_DEFENSE = "base model"  # the reference row: the preset's model, untrained
CELL_FIELDS = {"model", "data", "data_size", "defenses", "seed"}  # set per cell, never in a preset's ``train``
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
    # vLLM's parallel settings for each cell's generation; their product is the GPUs a cell takes on Ray. Left out of
    # the fingerprint at 1, so that folders made before they existed still resume.
    tensor_parallel_size: int = Field(1, ge=1, exclude_if=lambda size: size == 1)
    pipeline_parallel_size: int = Field(1, ge=1, exclude_if=lambda size: size == 1)
    data_parallel_size: int = Field(1, ge=1, exclude_if=lambda size: size == 1)
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_mode: str | None = None
    judge_engine: Literal["hf", "vllm"] | None = None

    def engine_options(self) -> EngineOptions:
        return EngineOptions(kv_cache_gib=self.kv_cache_gib, dtype=self.dtype,
                             tensor_parallel_size=self.tensor_parallel_size,
                             pipeline_parallel_size=self.pipeline_parallel_size,
                             data_parallel_size=self.data_parallel_size)

    @property
    def gpus_per_cell(self) -> int:
        return self.engine_options().parallel_gpus

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
    executor: Literal["local", "ray"] = "local"
    address: str | None = None  # the Ray cluster (``auto``, ``host:port``, ``ray://host:10001``); None: start one here
    cpus_per_cell: int = 1  # Ray: CPU cores each cell's task takes (its torch threads); a GPU each where there are GPUs


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
    from embench.engines import check_parallel
    from embench.judges import JudgeRegistry
    from embench.train.defenses import DEFENSES

    preset_path, preset = find_preset(spec.preset)
    if spec.executor == "ray":
        from embench.reproduce.ray_executor import ray_module

        ray_module()  # installed, before anything is written
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
    try:
        check_parallel(score.engine, score.engine_options())
    except EmbenchError as exc:
        raise EmbenchError(f"{preset_path}: score: {exc}") from None
    suite, tasks, probes, benign = _assemble_suite(preset, preset_path)
    registry = JudgeRegistry.default()
    settings = judge_settings([registry.get(judge) for task in tasks for judge in task.judges.values()],
                              model=score.judge_model, mode=score.judge_mode, base_url=score.judge_base_url,
                              engine=score.judge_engine)
    # Absolute: a Ray task runs in another working directory, on another machine that mounts the same path.
    out = (Path(spec.out) if spec.out is not None else Path("runs") / f"reproduce-{preset.id}").absolute()
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
