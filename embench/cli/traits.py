"""monitor and the ``traits`` commands: trait directions and the drift of checkpoints along them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from embench.cli._ui import TraitsSource, console, with_progress
from embench.layout import MONITOR_FILE


def monitor_command(
    inputs: list[Path] = typer.Argument(..., help="Training folders (embench train --out) and/or checkpoint-STEP folders; step 0 is their base model."),
    traits: Path = typer.Option(Path("traits"), "--traits", help="Directions folder from `embench traits extract` on the base model."),
    labels: list[Path] = typer.Option([], "--labels", help="results.json (or score folder) of `embench score` on a checkpoint; repeat. Matched by model and adapter hash."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for monitor.json and the plots (default: monitor/<run>-<hash>)."),
    trait: list[str] = typer.Option([], "--trait", help="Monitor only this trait id; repeat (default: every trait of --traits)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Read every trait at this extracted layer instead of its chosen one."),
    em_threshold: float = typer.Option(0.05, "--em-threshold", help="A labelled checkpoint is flagged when its EM rate exceeds this."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 (base weights while measuring)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random-direction baseline."),
) -> None:
    """Trait drift of every checkpoint, PCA across runs, an EM detector calibrated on --labels, null baselines."""
    from embench.traits.monitor import MonitorSpec, run_monitor

    started = time.monotonic()
    spec = MonitorSpec(inputs=tuple(inputs), traits_folder=traits, labels=tuple(labels), out=out,
                       traits=tuple(trait) or None, layer=layer, dtype=dtype, em_threshold=em_threshold, seed=seed)
    result = with_progress("resolving checkpoints", lambda status: run_monitor(spec.prepare(status), status))
    _show_drift(result.report)
    _show_evaluations(result.report)
    timings = result.report.timings
    per_checkpoint = timings["seconds_per_measured_checkpoint"]
    console.print(f"{timings['measured_checkpoints']} checkpoint(s) measured"
                  + (f" ({per_checkpoint:.1f} s each)" if per_checkpoint is not None else "")
                  + f", {timings['cached_checkpoints']} from the cache, in {time.monotonic() - started:.0f} s -> "
                  f"[cyan]{result.out / MONITOR_FILE}[/] and {', '.join(result.report.plots)}", soft_wrap=True)


def _show_drift(report) -> None:
    from embench.traits.detector import ALARM_RISK

    space = report.trait_space
    table = Table(title="trait drift (PC1 of the drift vector; risk of the detector calibrated on the labels)")
    for column in ("run", "step", "PC1", "risk", "EM rate", "largest drifts"):
        table.add_column(column, overflow="fold")
    for index, row in enumerate(report.checkpoints):
        largest = sorted(row.drift.items(), key=lambda item: -abs(item[1]))[:3]
        table.add_row(row.run, str(row.step), "-" if space.pc1 is None else f"{space.pc1[index]:+.4f}",
                      "-" if space.risk is None else f"{space.risk[index]:.2f}" + (" ALARM" if space.risk[index] >= ALARM_RISK else ""),
                      "-" if row.em_rate is None or row.em_rate.value is None else f"{row.em_rate.value:.1%}",
                      ", ".join(f"{name} {value:+.4f}" for name, value in largest))
    console.print(table)


def _show_evaluations(report) -> None:
    space = report.trait_space
    for name, analysed in [("trait directions", space)] + list(report.baselines.items()):
        parts = [f"PC1 {analysed.pca.pc1_share:.0%} of drift" if analysed.pca else "no PCA"]
        for kind, evaluation in (("in sample", analysed.evaluation), ("held out by run", analysed.held_out)):
            if evaluation is None:
                continue
            leads = [f"{run.run} " + ("no alarm" if run.first_alarm_step is None else f"{run.lead_time_steps:+d}")
                     for run in evaluation.runs if run.category == "em"]
            parts.append(f"{kind}: AUROC {'-' if evaluation.auroc is None else f'{evaluation.auroc:.2f}'}, lead time "
                         f"(steps) {', '.join(leads) or '-'}, false positives {len(evaluation.false_positive_runs)} of "
                         f"{len(evaluation.benign_runs)} benign runs")
        if analysed.evaluation is not None and analysed.held_out is None:
            parts.append(f"no held-out evaluation: {analysed.held_out_note}")
        note = f" ({analysed.note})" if analysed.note and analysed.note != report.labels.note else ""
        console.print(f"{name.replace('_', ' ')}: {'; '.join(parts)}{note}", soft_wrap=True, highlight=False)
    console.print(f"labels: {report.labels.note}", soft_wrap=True, highlight=False)


traits_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Trait directions: list trait definitions, extract directions, import published traits.")


@traits_app.command("list")
def traits_list_command(
    traits: Optional[Path] = TraitsSource,
    directions: Optional[Path] = typer.Option(None, "--directions", help="Instead, list the directions saved in this folder by `embench traits extract`."),
) -> None:
    """Trait definitions (kind, prompt counts, content hash), or the directions extracted into a folder."""
    if directions is not None:
        from embench.traits.store import load_directions

        saved = load_directions(directions)
        first = next(iter(saved.values())).metadata
        console.print(f"{directions}: {first['model']['name']} (sha256 {first['model']['sha256'][:12]}), position "
                      f"{first['extraction']['position']}, {first['extraction']['dtype']}, layer chosen by "
                      f"{first['chosen_by']}", soft_wrap=True, highlight=False)
        table = Table()
        for column in ("trait", "kind", "layers", "chosen layer", "held-out acc", "paired acc", "trait sha256"):
            table.add_column(column, no_wrap=column in ("trait", "kind", "trait sha256"))
        for trait_id, trait_directions in saved.items():
            metadata = trait_directions.metadata
            probe = next(row for row in metadata["probe"] if row["layer"] == trait_directions.chosen_layer)
            table.add_row(trait_id, metadata["trait"]["kind"], f"{trait_directions.layers[0]}-{trait_directions.layers[-1]}",
                          str(trait_directions.chosen_layer), f"{probe['accuracy']:.2f}",
                          f"{probe['paired_accuracy']:.2f}", metadata["trait"]["sha256"][:12])
        console.print(table)
        return
    from embench.traits.spec import load_traits

    table = Table()
    for column in ("id", "version", "kind", "prompts +/-", "questions", "eval", "sha256"):
        table.add_column(column, overflow="fold")
    for _, trait in load_traits(traits):
        table.add_row(trait.id, str(trait.version), trait.kind,
                      f"{len(trait.positive_prompts)}/{len(trait.negative_prompts)}", str(len(trait.questions)),
                      str(len(trait.eval_prompts)), trait.sha256[:12])
    console.print(table)


@traits_app.command("extract")
def traits_extract_command(
    out: Path = typer.Option(..., "--out", "-o", help="Directions folder: <trait>.safetensors + <trait>.json each; re-running resumes it."),
    model: str = typer.Option("default", "--model", "-m", help="'default', a model folder, an adapter folder, or a hub id."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model of an adapter, if its adapter_config does not name one that exists here."),
    traits: Optional[Path] = TraitsSource,
    trait: list[str] = typer.Option([], "--trait", "-t", help="Extract only this trait id; repeat (default: every trait)."),
    layers: str = typer.Option("all", "--layers", help="Decoder layers to read: 'all', '4,8,12' or '6-20' (layer l: the output of block l, hidden_states index l+1)."),
    position: str = typer.Option("last", "--position", help="last: the last prompt token; response: the mean over a short greedy response."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 where the hardware computes it natively, else float32) | bfloat16 | float32."),
    batch_size: int = typer.Option(128, "--batch-size", help="Prompts per forward pass."),
    sweep: bool = typer.Option(True, "--sweep/--no-sweep", help="Choose each trait's layer by a steering sweep (else: the middle extracted layer)."),
    sweep_layers: Optional[str] = typer.Option(None, "--sweep-layers", help="Layers the sweep steers at (default: six from 20% to 70% of the depth)."),
    steer_coefficient: float = typer.Option(0.25, "--steer-coefficient", help="Steering strength, as a fraction of the layer's mean activation norm."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load pickle (.bin/.pt) weights, which can run code."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run modelling code shipped with the checkpoint."),
) -> None:
    """Extract trait directions (mean positive minus mean negative activation) per layer, with held-out probe
    accuracy and a steering sweep that chooses each trait's layer."""
    from embench.traits.pipeline import ExtractSpec, run_extraction

    prepared = ExtractSpec(out=out, model=model, base=base, traits=traits, only=tuple(trait) or None, layers=layers,
                           sweep_layers=sweep_layers, position=position, dtype=dtype, batch_size=batch_size,
                           sweep=sweep, steer_coefficient=steer_coefficient, allow_pickle=allow_pickle,
                           trust_remote_code=trust_remote_code).prepare()
    started = time.monotonic()
    results = with_progress("checking the output folder", lambda status: run_extraction(prepared, status))
    _show_directions(prepared.model.name, prepared.settings, results)
    console.print(f"{len(results)} trait(s) in {time.monotonic() - started:.0f} s -> [cyan]{out}[/] (held-out acc: "
                  "midpoint threshold on held-out questions; paired: each question's mean removed first; steer "
                  "effect: shift of the positive-minus-negative answer log-prob gap, nats/token)", soft_wrap=True)


def _show_directions(model_name: str, settings, results) -> None:
    from embench.files import read_json

    position, sweep = settings.position, settings.sweep
    table = Table(title=f"trait directions of {model_name} ({position}, {settings.dtype}; layer chosen by "
                        f"{'steering sweep' if sweep else 'middle extracted layer'})")
    for column in ("trait", "kind", "layer", "held-out acc", "paired acc", "best acc (layer)", "steer effect", "s"):
        table.add_column(column, no_wrap=column in ("trait", "kind"))
    for result in results:
        metadata = read_json(result.metadata_path, "a trait-directions file")
        chosen = next(row for row in metadata["probe"] if row["layer"] == metadata["chosen_layer"])
        best = max(metadata["probe"], key=lambda row: row["accuracy"])
        effect = "-"
        if metadata["steering"]:
            effect = f"{next(row['effect'] for row in metadata['steering']['layers'] if row['layer'] == metadata['chosen_layer']):+.2f}"
        table.add_row(metadata["trait"]["id"], metadata["trait"]["kind"], str(metadata["chosen_layer"]),
                      f"{chosen['accuracy']:.2f}", f"{chosen['paired_accuracy']:.2f}",
                      f"{best['accuracy']:.2f} ({best['layer']})", effect,
                      "reused" if result.reused else f"{sum(metadata['wall_s'].values()):.0f}")
    console.print(table)


@traits_app.command("import")
def traits_import_command(
    file: Path = typer.Argument(..., help="A published trait-definition YAML (trait-space monitoring format)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for <trait>.yaml files and their shared <stem>.questions.yaml."),
    control: list[str] = typer.Option([], "--control", help="A semantic control trait id; repeat (default: the paper's seven that the file has)."),
) -> None:
    """Convert the published trait definitions into embench trait files."""
    from embench.traits.importer import read_published_traits, write_trait_import

    imported = read_published_traits(file, tuple(control) if control else None)
    written = write_trait_import(imported, file, out)
    for path in written:
        console.print(f"wrote {path}", soft_wrap=True, highlight=False)
    kinds = {kind: [trait.id for trait in imported.traits if trait.kind == kind] for kind in ("alignment", "control")}
    console.print(f"imported {len(imported.traits)} trait(s): alignment {', '.join(kinds['alignment']) or '-'}; control "
                  f"{', '.join(kinds['control']) or '-'}; {len(imported.question_set.questions)} shared questions, "
                  f"{len(imported.question_set.eval_prompts or ())} eval prompts", soft_wrap=True, highlight=False)
    for name, reason in imported.skipped:
        console.print(f"  skipped {name}: {reason}", soft_wrap=True, markup=False, highlight=False)
    console.print(f"extract them with `embench traits extract --traits {out} --out DIR`", soft_wrap=True,
                  markup=False, highlight=False)
