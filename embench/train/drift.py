"""``embench train --monitor-every K``: the trait drift of the network being trained, every K steps, and the alarm of
a detector calibrated by an earlier ``embench monitor`` on labelled checkpoints.

The numbers are those ``embench monitor`` computes for a saved checkpoint of the same step (same directions, prompts
and step-0 reading: the base model, i.e. the network with its adapter disabled), measured in place with the
defenses' hooks off, so a steering defense does not show up as drift. Measuring reads the network and never changes
it: a monitored run trains to the same weights as an unmonitored one.
"""

from __future__ import annotations

from embench.hashing import sha256_file
from embench.layout import MONITOR_FILE
from embench.models import ResolvedModel
from embench.train.config import MonitorSettings
from embench.traits.readings import load_trait_set, read_layers, trait_drift
from embench.traits.report import load_detector


class TrainingMonitor:
    def __init__(self, settings: MonitorSettings, model: ResolvedModel):
        self.settings = settings
        self.detector_record = None  # what train.json says of the detector, fixed for the run
        if settings.detector is None:
            self.trait_set, self.detector = load_trait_set(settings.traits, model), None
        else:
            self.trait_set, self.detector = load_detector(settings.detector, settings.traits, model)
            path = settings.detector
            file = path / MONITOR_FILE if path.is_dir() else path
            self.detector_record = {"file": str(file), "sha256": sha256_file(file),
                                    "alarm_risk": self.detector.alarm_risk, "em_threshold": self.detector.em_threshold}
        self.reference = None
        self.alarm_on = False

    def start(self, network) -> None:
        """The step-0 reading; ``network`` must be the base model (the caller disables the adapter and the hooks)."""
        self.reference = read_layers(network, self.trait_set)

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.settings.every == 0 or step == total_steps

    def measure(self, network) -> tuple[dict, bool]:
        """(fields for the step's log record, whether the alarm has just turned on)."""
        drift = trait_drift(network, self.trait_set, self.reference)
        fields: dict = {"trait_drift": drift}
        if self.detector is None:
            return fields, False
        risk = self.detector.risk(drift)
        alarm = risk >= self.detector.alarm_risk
        raised, self.alarm_on = alarm and not self.alarm_on, alarm
        return {**fields, "em_risk": risk, "alarm": alarm}, raised

    def record(self) -> dict:
        """What train.json says about the monitoring."""
        return {"every": self.settings.every, "traits": {"folder": str(self.settings.traits),
                                                         "sha256": self.trait_set.sha256, "ids": self.trait_set.ids,
                                                         "layers": {t.id: t.layer for t in self.trait_set.traits}},
                "detector": self.detector_record}
