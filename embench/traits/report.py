"""``monitor.json``: the typed report of `embench monitor`, and the detector it fits, which training reloads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel

from embench.errors import EmbenchError
from embench.files import read_json_object, validated
from embench.layout import MONITOR_FILE
from embench.metrics import Estimate
from embench.models import ResolvedModel
from embench.traits.detector import ALARM_RISK, Evaluation
from embench.traits.readings import TraitSet, load_trait_set

FORMAT = "embench-monitor"
FORMAT_VERSION = 1


class PcaReport(BaseModel):
    centred: bool = False
    checkpoints: int
    shares: list[float]  # of the sum of squared drift, per component
    pc1_share: float
    loadings: dict[str, float]  # PC1, per trait (or random direction)


class RiskModel(BaseModel):
    """A fitted detector: scores any drift vector over its traits, e.g. one logged during training."""

    traits: list[str]
    loadings: list[float]
    intercept: float
    slope: float
    pc1_threshold: float | None  # the PC1 score where risk crosses alarm_risk
    alarm_risk: float = ALARM_RISK
    em_threshold: float
    calibration_checkpoints: int
    calibration_flagged: int

    def pc1(self, drift: dict[str, float]) -> float:
        return float(sum(weight * drift[trait] for trait, weight in zip(self.traits, self.loadings)))

    def risk(self, drift: dict[str, float]) -> float:
        return float(1.0 / (1.0 + np.exp(-(self.intercept + self.slope * self.pc1(drift)))))


class SpaceReport(BaseModel):
    """PCA of drift along one set of directions, and the detector on its PC1."""

    directions: str
    traits: list[str]
    layers: dict[str, int]
    pca: PcaReport | None
    pc1: list[float] | None  # per checkpoint, in the order of MonitorReport.checkpoints
    detector: RiskModel | None
    risk: list[float] | None
    evaluation: Evaluation | None
    evaluated_on: str | None
    held_out: Evaluation | None = None  # each labelled run scored by a detector calibrated on the other runs
    held_out_note: str | None = None  # why there is no held-out evaluation
    note: str | None  # why no PCA or no detector


class CheckpointRecord(BaseModel):
    run: str
    step: int
    path: str | None
    adapter_sha256: str | None
    values: dict[str, float]
    drift: dict[str, float]
    em_rate: Estimate | None
    flagged: bool | None
    measured_s: float | None  # None: read from the cache


class LabelFile(BaseModel):
    path: str
    model_sha256: str
    adapter_sha256: str | None
    em_rate: Estimate | None
    matched: list[str]  # run@step


class LabelsReport(BaseModel):
    status: Literal["none given", "none matched", "all null", "ok"]
    note: str
    em_threshold: float
    usable_checkpoints: int
    files: list[LabelFile]


class RunRecord(BaseModel):
    name: str
    path: str
    steps: list[int]


class MonitorReport(BaseModel):
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    embench_version: str
    embench_git_sha: str | None
    created: str
    base_model: dict
    traits: dict
    runs: list[RunRecord]
    checkpoints: list[CheckpointRecord]
    trait_space: SpaceReport
    baselines: dict[str, SpaceReport]
    labels: LabelsReport
    timings: dict
    plots: list[str]



def read_report(path: Path) -> tuple[Path, MonitorReport]:
    file = Path(path) / MONITOR_FILE if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise EmbenchError(f"{path} is neither a monitor folder with {MONITOR_FILE} nor a {MONITOR_FILE} file")
    what = f"a {MONITOR_FILE} written by `embench monitor`"
    return file, validated(MonitorReport, read_json_object(file, what), f"{file}: not {what}")


def load_risk_model(path: Path) -> RiskModel:
    """The detector fitted by an earlier ``embench monitor`` (its ``monitor.json``, or the folder holding it)."""
    return _fitted_detector(*read_report(path))


def _fitted_detector(file: Path, report: MonitorReport) -> RiskModel:
    if report.trait_space.detector is None:
        raise EmbenchError(f"{file} holds no fitted detector ({report.trait_space.note}): run `embench monitor` with "
                           "--labels of checkpoints with and without EM")
    return report.trait_space.detector


def load_detector(path: Path, folder: Path, model: ResolvedModel) -> tuple[TraitSet, RiskModel]:
    """An earlier monitor's detector and the trait set it scores, loaded from ``folder``: the same directions at the
    same layers, read on the same prompts, or the detector's risk would be computed on numbers it never saw."""
    file, report = read_report(path)
    detector = _fitted_detector(file, report)
    trait_set = load_trait_set(folder, model, [item["id"] for item in report.traits["items"]])
    if trait_set.sha256 != report.traits["sha256"]:
        raise EmbenchError(f"the detector in {path} was calibrated on other trait directions, layers or prompts than "
                           f"{folder} holds: use the directions folder its `embench monitor` read "
                           f"({report.traits['folder']})")
    return trait_set, detector

