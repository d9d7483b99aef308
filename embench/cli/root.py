"""The root ``embench`` app: wires the command modules together and maps errors to exit codes."""

from __future__ import annotations

import importlib
import signal
import sys

import typer

from embench.cli._ui import _quiet_libraries, errors
from embench.cli.catalog import models_app, tasks_app
from embench.cli.export import export_app
from embench.cli.judges import judges_app
from embench.cli.leaderboard import leaderboard_app
from embench.cli.run import compare_command, generate_command, judge_command, score_command
from embench.cli.train import reproduce_command, train_command
from embench.cli.traits import monitor_command, traits_app
from embench.errors import EmbenchError

# The click typer parses with: click itself, or the copy newer typers vendor as typer._click.
click = importlib.import_module(typer.BadParameter.__module__)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evaluate language models for emergent misalignment.")

app.add_typer(models_app, name="models")
app.add_typer(judges_app, name="judges")
app.add_typer(tasks_app, name="tasks")
app.add_typer(leaderboard_app, name="leaderboard")
app.add_typer(traits_app, name="traits")
app.add_typer(export_app, name="export")

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
        exit_code = app(standalone_mode=False)
    except click.NoArgsIsHelpError as exc:  # `embench judges` alone: the group's help, as click does
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        # click's framed box is five lines; one line, with where to look, keeps errors greppable.
        command = exc.ctx.command_path if exc.ctx else "embench"
        message = " ".join(exc.format_message().split())
        errors.print(f"error: {message} (see: {command} --help)", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.ClickException as exc:
        errors.print(f"error: {' '.join(exc.format_message().split())}", markup=False, highlight=False,
                     soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        errors.print("aborted", markup=False, highlight=False)
        sys.exit(130)
    except EmbenchError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)
