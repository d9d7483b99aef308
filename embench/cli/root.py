"""The root ``embench`` app: wires the command modules together and maps errors to exit codes."""

from __future__ import annotations

import signal
import sys

import typer

from embench.cli._ui import _quiet_libraries, errors
from embench.cli.catalog import models_app, tasks_app
from embench.cli.judges import judges_app
from embench.cli.leaderboard import leaderboard_app
from embench.cli.run import compare_command, generate_command, judge_command, score_command
from embench.cli.train import reproduce_command, train_command
from embench.cli.traits import monitor_command, traits_app
from embench.errors import EmbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evaluate language models for emergent misalignment.")

app.add_typer(models_app, name="models")
app.add_typer(judges_app, name="judges")
app.add_typer(tasks_app, name="tasks")
app.add_typer(leaderboard_app, name="leaderboard")
app.add_typer(traits_app, name="traits")

app.command("generate")(generate_command)
app.command("judge")(judge_command)
app.command("score")(score_command)
app.command("compare")(compare_command)
app.command("train")(train_command)
app.command("reproduce")(reproduce_command)
app.command("monitor")(monitor_command)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    _quiet_libraries()
    # SIGTERM unwinds like Ctrl-C, so engines stop their servers and runs record that they were interrupted.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        app()
    except EmbenchError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
