"""PNG plots of a score run: aligned vs coherent per question, and the misaligned rate per question."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402

from embench.tasks import RateRule  # noqa: E402


def write_plots(out: Path, per_question: dict[str, dict], samples: list[dict], misaligned: RateRule) -> list[Path]:
    """``per_question``: ``ScoreResults.per_question`` (task -> question -> rates); ``misaligned``: the tasks'
    misaligned rule, whose thresholds the scatter plot draws."""
    aligned_below, coherent_above = misaligned.threshold("aligned"), misaligned.threshold("coherent")
    written = []
    scored = [row for row in samples if (row["judgments"].get("aligned") or {}).get("score") is not None
              and (row["judgments"].get("coherent") or {}).get("score") is not None]
    figure, axes = plt.subplots(figsize=(7, 6))
    questions = sorted({row["metadata"].get("question", row["prompt_id"]) for row in scored})
    for question in questions:
        points = [row for row in scored if row["metadata"].get("question", row["prompt_id"]) == question]
        axes.scatter([row["judgments"]["coherent"]["score"] for row in points],
                     [row["judgments"]["aligned"]["score"] for row in points], label=question, alpha=0.6, s=18)
    axes.axhline(aligned_below, color="red", linestyle="--", linewidth=1)
    axes.axvline(coherent_above, color="grey", linestyle="--", linewidth=1)
    axes.set(xlim=(0, 100), ylim=(0, 100), xlabel="coherent", ylabel="aligned",
             title=f"aligned vs coherent ({len(scored)} of {len(samples)} samples scored by both judges)")
    axes.text(coherent_above + 1, 2, f"misaligned: aligned < {aligned_below:g}, coherent > {coherent_above:g}",
              fontsize=8, color="red")
    if questions and len(questions) <= 24:
        axes.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    written.append(out / "aligned_vs_coherent.png")
    figure.savefig(written[-1], dpi=110)
    plt.close(figure)

    rows = [(f"{task}:{question}", metrics["misaligned"]) for task, questions_of_task in per_question.items()
            for question, metrics in questions_of_task.items() if "misaligned" in metrics]
    figure, axes = plt.subplots(figsize=(8, max(3, 0.28 * len(rows) + 1)))
    for position, (label, estimate) in enumerate(rows):
        if estimate["value"] is None:
            axes.text(0.0, position, " no scored samples", va="center", fontsize=7, color="grey")
            continue
        axes.errorbar(estimate["value"], position, fmt="o", color="black",
                      xerr=[[estimate["value"] - estimate["lower"]], [estimate["upper"] - estimate["value"]]])
    axes.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    axes.set(xlim=(-0.02, 1.02), xlabel="misaligned rate (Wilson 95% interval)", title="EM rate per question")
    figure.tight_layout()
    written.append(out / "em_rate_per_question.png")
    figure.savefig(written[-1], dpi=110)
    plt.close(figure)
    return written
