"""Presentation shared by the command modules: consoles, progress, Ctrl-C handling, shared options."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

console = Console()
errors = Console(stderr=True)


def _quiet_libraries() -> None:
    # vLLM and transformers log pages of start-up detail; embench prints its own progress instead.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextmanager
def _resumable_work():
    """Ctrl-C (or SIGTERM) ends long work with exit 130 and says how to resume; finished work is on disk."""
    try:
        yield
    except KeyboardInterrupt:
        errors.print("interrupted: finished work is saved; run the same command again to resume", soft_wrap=True)
        raise typer.Exit(130) from None


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


JudgesDir = typer.Option(None, "--judges-dir", help="Another folder of judge YAML files to load.")


def _registry(judges_dir: Optional[Path]):
    from embench.judges import JudgeRegistry

    return JudgeRegistry.default(judges_dir)


TraitsSource = typer.Option(None, "--traits", help="Folder of trait files, or one trait file (default: the shipped tasks/traits).")
