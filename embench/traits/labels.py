"""EM labels for monitored checkpoints: the headline EM rate of `embench score` results, matched by weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embench.errors import EmbenchError
from embench.hashing import sha256_json
from embench.layout import results_file
from embench.metrics import Estimate, pool_estimates
from embench.results import ScoreResults
from embench.traits.checkpoints import Checkpoint, Run
from embench.traits.report import LabelFile, LabelsReport


@dataclass(frozen=True)
class Label:
    source: Path
    model_sha256: str
    adapter_sha256: str | None
    em_rate: Estimate | None  # None: the results hold no ood task


def read_label(path: Path) -> Label:
    """The EM rate of a scored checkpoint (the headline rate of :mod:`embench.results`)."""
    results = ScoreResults.load(path)
    file = results_file(path)
    if not results.config.model_sha:
        raise EmbenchError(f"{file}: no model hash (config.model_sha): pass the results.json that `embench score` "
                           "wrote")
    return Label(source=file, model_sha256=results.config.model_sha, adapter_sha256=results.config.adapter_sha,
                 em_rate=results.headline().em_rate)



def match_labels(labels: list[Label], checkpoints: list[tuple[Run, Checkpoint]],
                   em_threshold: float) -> tuple[LabelsReport, dict[tuple[str, int], Estimate]]:
    """Labels matched to checkpoints by weights; several results of one checkpoint are pooled."""
    by_identity: dict[str, list[str]] = {}
    for run, checkpoint in checkpoints:
        by_identity.setdefault(sha256_json(checkpoint.model.identity), []).append(f"{run.name}@{checkpoint.step}")
    estimates: dict[str, list[Estimate]] = {}
    files = []
    for label in labels:
        identity = sha256_json({"base_sha256": label.model_sha256, "adapter_sha256": label.adapter_sha256})
        matched = by_identity.get(identity, [])
        if matched and label.em_rate is not None:
            estimates.setdefault(identity, []).append(label.em_rate)
        files.append(LabelFile(path=str(label.source), model_sha256=label.model_sha256,
                               adapter_sha256=label.adapter_sha256, em_rate=label.em_rate, matched=matched))
    pooled = {identity: pool_estimates([estimate.model_dump() for estimate in parts]) for identity, parts in estimates.items()}
    per_checkpoint = {(run.name, checkpoint.step): pooled[identity] for run, checkpoint in checkpoints
                      if (identity := sha256_json(checkpoint.model.identity)) in pooled}
    usable = sum(1 for estimate in per_checkpoint.values() if estimate.value is not None)
    if not labels:
        status, note = "none given", "no labels given (--labels): drift and PCA only, no detector"
    elif not any(file.matched for file in files):
        status, note = "none matched", ("no results file is of a monitored checkpoint (matched by model and adapter "
                                        "hash): drift and PCA only, no detector")
    elif not usable:
        status, note = "all null", ("every matched EM rate is null (no usable judge score, or no ood task): drift "
                                    "and PCA only, no detector")
    else:
        status, note = "ok", f"{usable} labelled checkpoint(s); flagged when the EM rate exceeds {em_threshold}"
    return (LabelsReport(status=status, note=note, em_threshold=em_threshold, usable_checkpoints=usable, files=files),
            per_checkpoint)

