"""The ``export`` commands: a score directory in another tool's format."""

from __future__ import annotations

from pathlib import Path

import typer

from embench.cli._ui import console
from embench.errors import EmbenchError

export_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Write a score directory in another tool's format.")


@export_app.command("inspect")
def export_inspect_command(
        score_dir: Path = typer.Argument(..., help="A finished `embench score` directory."),
        out: Path = typer.Option(Path("logs"), "--out", "-o", help="Log folder for `inspect view --log-dir`.")) -> None:
    """One inspect log (.eval) per task: samples, judge scores with their identities, metrics, provenance."""
    try:
        from embench.inspectai.export import export_inspect_logs
    except ImportError as exc:
        raise EmbenchError(f"inspect_ai is not installed ({exc.name}): pip install 'embench[inspect]'") from None
    for path in export_inspect_logs(score_dir, out):
        console.print(f"wrote {path}", soft_wrap=True, highlight=False)
    console.print(f"view them with: inspect view start --log-dir {out}", soft_wrap=True, highlight=False)
