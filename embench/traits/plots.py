"""The monitor's plots: every trait's drift over steps, and PC1 with the detector's alarm."""

from __future__ import annotations

from pathlib import Path

from embench.traits.detector import ALARM_RISK
from embench.traits.report import MonitorReport


def write_monitor_plots(out: Path, report: MonitorReport) -> list[Path]:
    """``drift.png``: every trait's drift over steps, one panel per run; ``pc1.png``: PC1 of the trait drift over
    steps per run, with the detector's alarm threshold, each run's first alarm and its EM onset."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI or servers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = report.checkpoints
    space = report.trait_space
    kinds = {item["id"]: item["kind"] for item in report.traits["items"]}
    figure, axes = plt.subplots(len(report.runs), 1, figsize=(9, 3.2 * len(report.runs)), squeeze=False)
    for axis, run in zip(axes[:, 0], report.runs):
        points = [row for row in rows if row.run == run.name]
        for trait in space.traits:
            axis.plot([row.step for row in points], [row.drift[trait] for row in points], marker="o", markersize=3,
                      linestyle="--" if kinds[trait] == "control" else "-", label=f"{trait} ({kinds[trait]})")
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set(title=f"{run.name}: trait drift from step 0", xlabel="training step",
                 ylabel="drift / step-0 activation norm")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    written = [out / "drift.png"]
    figure.savefig(written[-1], dpi=110)
    plt.close(figure)
    if space.pc1 is None:
        return written

    figure, axis = plt.subplots(figsize=(9, 4.8))
    for run in report.runs:
        indices = [index for index, row in enumerate(rows) if row.run == run.name]
        steps = [rows[index].step for index in indices]
        scores = [space.pc1[index] for index in indices]
        (line,) = axis.plot(steps, scores, marker="o", markersize=4, label=run.name)
        if space.risk is not None:
            alarm = next((position for position, index in enumerate(indices) if space.risk[index] >= ALARM_RISK),
                         None)
            if alarm is not None:
                axis.scatter([steps[alarm]], [scores[alarm]], marker="^", s=110, color=line.get_color(),
                             edgecolors="black", zorder=3, label=f"{run.name}: first alarm (step {steps[alarm]})")
        onset = next((rows[index].step for index in indices if rows[index].flagged), None)
        if onset is not None:
            axis.axvline(onset, color=line.get_color(), linestyle=":", linewidth=1.5,
                         label=f"{run.name}: EM onset (step {onset})")
    if space.detector is not None and space.detector.pc1_threshold is not None:
        axis.axhline(space.detector.pc1_threshold, color="red", linestyle="--", linewidth=1,
                     label=f"alarm threshold (risk {ALARM_RISK})")
    axis.set(title=f"PC1 of trait drift ({space.pca.pc1_share:.0%} of the drift on the first axis)",
             xlabel="training step", ylabel="PC1 score")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    written.append(out / "pc1.png")
    figure.savefig(written[-1], dpi=110)
    plt.close(figure)
    return written
