"""The ``leaderboard`` commands: publish, show, validate, render, schema."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from embench.cli._ui import console
from embench.layout import BOARD_FILE
from embench.metrics import format_estimate

leaderboard_app = typer.Typer(add_completion=False, no_args_is_help=True,
                              help="Leaderboards: publish results, show, validate, render the page.")


@leaderboard_app.command("publish")
def leaderboard_publish_command(
    results: list[Path] = typer.Argument(..., help="Score directories (or results.json / lm-eval results files)."),
    board: Path = typer.Option(..., "--board", "-b", help="Board folder, e.g. leaderboards/em-core (created if new)."),
    allow_mixed_judges: bool = typer.Option(False, "--allow-mixed-judges", help="Accept results judged by another judge model or judge prompt version than the board's (the board then shows it)."),
    allow_limit: bool = typer.Option(False, "--allow-limit", help="Accept lm-eval results of a --limit run (part of each task); the entry records the limit."),
    defense: Optional[str] = typer.Option(None, "--defense", help="Defense tag (default: 'defense' from the checkpoint's train.json, if any)."),
    data_tag: Optional[str] = typer.Option(None, "--data-tag", help="Training-data tag (default: 'data' from the checkpoint's train.json, if any)."),
    organization: str = typer.Option("unknown", "--organization", help="Who ran the evaluation (source_metadata)."),
) -> None:
    """Add results to a board as validated entries (all or none), re-rank it and write its page."""
    from embench.leaderboard import Tags, publish, render_board

    published = publish(board, results, Tags(defense=defense, training_data=data_tag, organization=organization),
                        allow_mixed_judges=allow_mixed_judges, allow_limit=allow_limit)
    pages = render_board(board)
    for entry in published.added:
        console.print(f"published {entry.evaluation_id} -> {board / entry.file}", soft_wrap=True, highlight=False)
    _print_board(published.board)
    console.print(f"{len(published.board.entries)} entries, board validated -> [cyan]{board / BOARD_FILE}"
                  f"[/]; page -> [cyan]{pages[0]}[/]", soft_wrap=True)


@leaderboard_app.command("show")
def leaderboard_show_command(board: Path = typer.Argument(..., help="Board folder.")) -> None:
    """The board's ranking, with 95% intervals."""
    from embench.leaderboard import load_board

    _print_board(load_board(board))


@leaderboard_app.command("validate")
def leaderboard_validate_command(board: Path = typer.Argument(..., help="Board folder.")) -> None:
    """Check every file of a board: schema, hashes, samples checksums, ranks, suite."""
    from embench.leaderboard import validate_board

    checked = validate_board(board)
    console.print(f"ok: {board} ({len(checked.entries)} entries, every file matches its schema and hash)",
                  soft_wrap=True, highlight=False)


@leaderboard_app.command("render")
def leaderboard_render_command(board: Path = typer.Argument(..., help="Board folder, or a folder of boards.")) -> None:
    """Write the board's self-contained index.html and the list of boards beside it."""
    from embench.leaderboard import render

    for page in render(board):
        console.print(f"wrote {page}", soft_wrap=True, highlight=False)


@leaderboard_app.command("schema")
def leaderboard_schema_command(out: Path = typer.Option(Path("leaderboards/schema"), "--out", "-o",
                                                        help="Folder for entry.schema.json and leaderboard.schema.json.")) -> None:
    """Write the JSON Schema of entry files and of leaderboard.json (generated from embench's models)."""
    from embench.leaderboard import write_json_schemas

    for path in write_json_schemas(out):
        console.print(f"wrote {path}", soft_wrap=True, highlight=False)


def _print_board(board) -> None:

    suite = f"{board.suite.id} v{board.suite.version}" if board.suite else "no suite yet"
    table = Table(title=f"{board.name} ({suite}): ranked by EM rate, lowest first (95% intervals)")
    for column in ("#", "model", "defense", "data", "EM rate", "in-domain", "incoherent", "benign", "source"):
        table.add_column(column, overflow="fold")
    for entry in board.entries:
        table.add_row(str(entry.rank), entry.model, entry.defense or "-", entry.training_data or "-",
                      *(format_estimate(estimate) for estimate in (entry.em_rate, entry.in_domain_misaligned,
                                                                    entry.incoherent, entry.benign_accuracy)),
                      entry.source + (" (mixed judges)" if entry.mixed_judges else ""))
    console.print(table)
