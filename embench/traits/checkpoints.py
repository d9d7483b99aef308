"""What the monitor reads: runs of `embench train` and their checkpoints, step 0 being the base model."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from embench.errors import EmbenchError
from embench.files import read_json_object
from embench.layout import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, TRAIN_FILE, TRAINER_STATE_FILE
from embench.models import ResolvedModel, resolve_model
from embench.results import TrainRecord

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    model: ResolvedModel  # step 0: the base model itself
    path: Path | None  # None at step 0


@dataclass(frozen=True)
class Run:
    name: str
    path: Path
    checkpoints: tuple[Checkpoint, ...]  # step order, step 0 first


def _read_json(path: Path) -> dict:
    return read_json_object(path, "a record of `embench train` or `embench monitor`")


def _is_training_folder(path: Path) -> bool:
    return (path / TRAIN_FILE).is_file() and not (path / TRAINER_STATE_FILE).is_file()


def _step_of(folder: Path) -> int:
    """A checkpoint's training step: from its train.json, else from its name ``checkpoint-STEP``."""
    step = TrainRecord.load(folder / TRAIN_FILE).step if (folder / TRAIN_FILE).is_file() else None
    if step is None and (match := CHECKPOINT_NAME.match(folder.name)):
        step = int(match.group(1))
    if not isinstance(step, int) or step < 1:
        raise EmbenchError(f"cannot tell which training step {folder} holds: pass its training folder, or name it "
                           "checkpoint-STEP (STEP >= 1; step 0 is the base model)")
    return step


def _training_checkpoints(folder: Path) -> dict[int, Path]:
    """The adapters of a training folder by step: every complete checkpoint-STEP/, and the final adapter once the run
    is complete."""
    found = {_step_of(path): path for path in folder.glob("checkpoint-*")
             if path.is_dir() and (path / ADAPTER_WEIGHTS_FILE).is_file() and (path / ADAPTER_CONFIG_FILE).is_file()}
    record = TrainRecord.load(folder / TRAIN_FILE)
    if record.status == "complete" and record.step is not None and (folder / ADAPTER_WEIGHTS_FILE).is_file():
        found[record.step] = folder
    if not found:
        raise EmbenchError(f"training folder {folder} holds no checkpoint yet: train with --save-every, or wait for "
                           "its first checkpoint")
    return found


def collect_runs(inputs: Sequence[Path]) -> tuple[ResolvedModel, list[Run]]:
    """The base model and the runs of training folders and/or checkpoint folders (grouped by their parent folder),
    each with step 0 (the base model) first. All must be LoRA fine-tunes of one base model."""
    if not inputs:
        raise EmbenchError("no runs given: pass a training folder (`embench train --out`) or checkpoint folders")
    found: dict[Path, dict[int, Path]] = {}
    for given in map(Path, inputs):
        if not given.exists():
            raise EmbenchError(f"{given} does not exist: pass a training folder (`embench train --out`) or checkpoint "
                               "folders")
        if _is_training_folder(given):
            run, steps = given, _training_checkpoints(given)
        elif (given / ADAPTER_CONFIG_FILE).is_file():
            run, steps = given.parent, {_step_of(given): given}
        else:
            raise EmbenchError(f"{given} is neither a training folder ({TRAIN_FILE}) nor a LoRA checkpoint folder "
                               f"({ADAPTER_CONFIG_FILE})")
        known = found.setdefault(run.resolve(), {})
        for step, folder in steps.items():
            if step in known and known[step].resolve() != folder.resolve():
                raise EmbenchError(f"{known[step]} and {folder} both hold step {step} of run {run}: pass one of them")
            known[step] = folder
    resolved = {folder: resolve_model(str(folder)) for steps in found.values() for folder in steps.values()}
    bases: dict[str, Path] = {}
    for folder, model in resolved.items():
        bases.setdefault(model.base_sha256, folder)
    if len(bases) > 1:
        (sha_a, folder_a), (sha_b, folder_b) = list(bases.items())[:2]
        raise EmbenchError(f"checkpoints of different base models: {folder_a} fine-tunes base {sha_a[:12]}, "
                           f"{folder_b} base {sha_b[:12]}: monitor each base model's runs separately")
    first = next(iter(bases.values()))
    base = resolve_model(_read_json(first / ADAPTER_CONFIG_FILE)["base_model_name_or_path"])
    names = [path.name for path in found]
    runs = []
    for path, steps in found.items():
        name = path.name if names.count(path.name) == 1 else str(path)
        checkpoints = [Checkpoint(step=0, model=base, path=None)] + [
            Checkpoint(step=step, model=resolved[folder], path=folder) for step, folder in sorted(steps.items())]
        runs.append(Run(name=name, path=path, checkpoints=tuple(checkpoints)))
    return base, runs

