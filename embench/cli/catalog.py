"""The ``models`` and ``tasks`` commands: what embench has to evaluate with."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from embench.cli._ui import console
from embench.errors import EmbenchError

if TYPE_CHECKING:
    from embench.importers import PublishedImport

models_app = typer.Typer(add_completion=False, help="The bundled default model and embench's model cache.")

tasks_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Task and suite definitions under tasks/.")


@models_app.callback(invoke_without_command=True)
def models_command(ctx: typer.Context) -> None:
    """Show the default model, the cache folder, and every cached model with its hash."""
    if ctx.invoked_subcommand is not None:
        return
    from embench.home import models_dir
    from embench.models import DEFAULT_MODEL_NAME, GGUF_FILE, GGUF_PACKAGE, cached_models, default_model_dir

    console.print(f"default model: [bold]{DEFAULT_MODEL_NAME}[/] ({GGUF_FILE} from PyPI package {GGUF_PACKAGE})",
                  soft_wrap=True)
    console.print(f"default model folder: {default_model_dir()}", soft_wrap=True)
    console.print(f"cache: {models_dir()}", soft_wrap=True)
    rows = cached_models()
    console.print(f"{len(rows)} cached model(s):")
    # One line per model, never wrapped: hashes are for copying, not for a table to truncate.
    for row in rows:
        source = row["source"] or {}
        origin = f"{source.get('package', '')} {source.get('version', '')}".strip() or "-"
        console.print(f"  {Path(row['path']).name}  sha256={row['weights_sha256'] or '(no manifest)'}  "
                      f"source={origin}  {row['bytes'] / 1e6:.0f} MB", soft_wrap=True, highlight=False)


@models_app.command("prepare")
def models_prepare_command() -> None:
    """Convert the bundled GGUF into a safetensors folder in the cache (once; later calls are instant)."""
    from embench.models import prepare_default_model, weights_sha256

    with console.status("preparing the default model"):
        folder = prepare_default_model()
    console.print(f"default model ready: {folder} (weights sha256 {weights_sha256(folder)})")


@tasks_app.command("list")
def tasks_list_command() -> None:
    """Every task and suite, with version, family, size and content hash."""
    from embench.tasks import all_tasks, find_suite, tasks_dir

    table = Table()
    for column in ("id", "version", "family", "questions", "judges", "sha256"):
        table.add_column(column, overflow="fold")
    for _, task in all_tasks():
        table.add_row(task.id, str(task.version), task.family, str(len(task.questions)),
                      ", ".join(f"{m}={j}" for m, j in task.judges.items()) or "-", task.sha256[:12])
    console.print(table)
    for path in sorted((tasks_dir() / "suites").glob("*.yaml")):
        suite = find_suite(str(path))
        console.print(f"suite {suite.id} v{suite.version}: {', '.join(suite.tasks)}", soft_wrap=True)


@tasks_app.command("show")
def tasks_show_command(task: str) -> None:
    """A task's definition (as loaded, data sources read in)."""
    import yaml

    from embench.tasks import find_task

    loaded = find_task(task)
    console.print(yaml.safe_dump({**loaded.model_dump(mode="json"), "sha256": loaded.sha256}, sort_keys=False,
                                 allow_unicode=True, width=120), markup=False, highlight=False, soft_wrap=True)


@tasks_app.command("validate")
def tasks_validate_command(files: list[Path]) -> None:
    """Check task files (schema, data sources, judges named by their metrics exist)."""
    from embench.judges import JudgeRegistry
    from embench.tasks import load_task_file

    registry = JudgeRegistry.default()
    for file in files:
        if not file.is_file():
            raise EmbenchError(f"task file {file} does not exist")
        task = load_task_file(file)
        for judge_id in task.judges.values():
            registry.get(judge_id)
        console.print(f"ok: {task.id} v{task.version} ({len(task.questions)} questions, sha256 {task.sha256[:12]})")


@tasks_app.command("import")
def tasks_import_command(
    files: list[Path] = typer.Argument(..., help="Published free-form judged question YAML files (Betley et al. format)."),
    out: Path = typer.Option(Path("imported"), "--out", "-o", help="Writes <out>/tasks/<id>.yaml and <out>/judges/<id>.yaml."),
    id_prefix: Optional[str] = typer.Option(None, "--id-prefix", help="Task id and judge id prefix of a single file (default: the file name)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Also write <out>/suites/<SUITE>.yaml listing every imported task, for `embench score --suite`."),
) -> None:
    """Convert published question files into embench tasks and their judges (and, with --suite, a suite)."""
    from embench.importers import published_suite, read_published, write_imported

    if id_prefix is not None and len(files) > 1:
        raise EmbenchError("--id-prefix names the tasks of one file: import several files without it (each file's "
                           "tasks are named after the file)")
    reports = [read_published(file, id_prefix) for file in files]
    for file, report in zip(files, reports):
        if not report.tasks:
            reasons = Counter(skipped.reason for skipped in report.skipped)
            raise EmbenchError(f"{file}: nothing to import: all {report.entries} entries were skipped ("
                               + "; ".join(f"{count} x {reason}" for reason, count in reasons.items()) + ")")
    tasks = [task for report in reports for task in report.tasks]
    judges = [judge for report in reports for judge in report.judges]
    written = write_imported(tasks, judges, out, published_suite(suite, tasks) if suite is not None else None)
    for path in written:
        console.print(f"wrote {path}", soft_wrap=True, highlight=False)
    for file, report in zip(files, reports):
        _print_import(file, report)
    if suite is not None:
        console.print(f"score it as published: embench score CHECKPOINT --suite {out / 'suites' / f'{suite}.yaml'} "
                      f"--judges-dir {out / 'judges'} --judge-model gpt-4o-2024-08-06 --judge-base-url URL",
                      soft_wrap=True, markup=False, highlight=False)
    else:
        console.print(f"install the judges with `embench judges add FILE` (or copy {out / 'judges'} into "
                      "$EMBENCH_HOME/judges, or pass --judges-dir) before scoring the task", soft_wrap=True,
                      markup=False, highlight=False)


def _print_import(file: Path, report: PublishedImport) -> None:
    reasons = Counter(skipped.reason for skipped in report.skipped)
    console.print(f"{file}: imported {report.imported} of {report.entries} entries into {len(report.tasks)} task(s) "
                  f"({', '.join(task.id for task in report.tasks)}) and {len(report.judges)} judge(s); "
                  f"skipped {len(report.skipped)}", soft_wrap=True, highlight=False)
    for reason, count in reasons.items():
        ids = ", ".join(skipped.id for skipped in report.skipped if skipped.reason == reason)
        console.print(f"  skipped {count}: {reason} ({ids[:200]})", soft_wrap=True, markup=False, highlight=False)
    for note in report.notes:
        console.print(f"  note: {note}", soft_wrap=True, markup=False, highlight=False)
