"""Presentation shared by the command modules: consoles, progress, Ctrl-C handling, shared options."""

from __future__ import annotations

import functools
import inspect
import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from embench.errors import EmbenchError

console = Console()
errors = Console(stderr=True)


def _quiet_libraries() -> None:
    # vLLM and transformers log pages of start-up detail; embench prints its own progress instead.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextmanager
def library_output(log_file: Path, verbose: bool):
    """What vLLM, torch and transformers print (warnings, start-up notes, weight-loading bars; their threads and
    child processes too, which share the process's stderr) goes to ``log_file``, not the terminal, unless
    ``verbose``; embench's own progress and messages still reach the terminal. It is captured first and added to
    ``log_file`` at the end, except after a refusal (an EmbenchError) that wrote nothing, which leaves nothing."""
    if verbose:
        os.environ.update(VLLM_LOGGING_LEVEL="INFO", TRANSFORMERS_VERBOSITY="warning")  # not _quiet_libraries'
        yield
        return
    folder = log_file.parent
    before = _listing(folder)
    sys.stderr.flush()
    terminal = os.dup(2)
    captured = tempfile.TemporaryFile()
    os.dup2(captured.fileno(), 2)
    errors.file = os.fdopen(os.dup(terminal), "w", encoding="utf-8", errors="replace")
    refused = False
    try:
        yield
    except EmbenchError:
        refused = True
        raise
    finally:
        sys.stderr.flush()
        errors.file.close()
        errors.file = None  # back to sys.stderr
        os.dup2(terminal, 2)
        os.close(terminal)
        with captured:
            captured.seek(0)
            wrote = _listing(folder) != before
            if (wrote or not refused) and (text := captured.read()):
                log_file.parent.mkdir(parents=True, exist_ok=True)
                with open(log_file, "ab") as log:
                    log.write(text)


def _listing(folder: Path) -> dict[str, int] | None:
    """What a folder holds, each name with its modification time (None: no folder, or a path that cannot be one,
    such as a name over the file-name limit, which the command itself refuses)."""
    try:
        return {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    except OSError:
        return None


Verbose = typer.Option(False, "--verbose", help="Show the libraries' own warnings and logs on the terminal instead "
                                                "of writing them to the run directory's libraries.log.")


@contextmanager
def _resumable_work():
    """Ctrl-C (or SIGTERM) ends long work with exit 130 and says how to resume; finished work is on disk."""
    try:
        yield
    except KeyboardInterrupt:
        errors.print("interrupted: finished work is saved; run the same command again to resume", soft_wrap=True)
        raise typer.Exit(130) from None


class _CountColumn(MofNCompleteColumn):
    """``done/total`` for a phase that counts its work; nothing for one that does not (loading, metrics)."""

    def render(self, task: Task) -> Text:
        return super().render(task) if task.fields.get("counted") else Text("")


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _CountColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


JudgesDir = typer.Option(None, "--judges-dir", help="Another folder of judge YAML files to load.")


def _registry(judges_dir: Optional[Path]):
    from embench.judges import JudgeRegistry

    return JudgeRegistry.default(judges_dir)


TraitsSource = typer.Option(None, "--traits", help="Folder of trait files, or one trait file (default: the shipped tasks/traits).")


Result = TypeVar("Result")
Status = Callable[..., None]  # status(text, done=None, total=None)


def with_progress(first: str, work: Callable[[Status], Result]) -> Result:
    """Long work that ``work`` reports through ``status``, one progress line per phase (a new description starts a
    new line, so each phase shows its own count and time); Ctrl-C ends it resumably."""
    with _progress() as progress, _resumable_work():
        phase = {"text": first, "bar": progress.add_task(first, total=None)}

        def status(text: str, done: Optional[int] = None, total: Optional[int] = None) -> None:
            if text != phase["text"]:
                _finish(progress, phase["bar"])
                phase.update(text=text, bar=progress.add_task(text, total=total))
            progress.update(phase["bar"], completed=done, total=total, **({"counted": True} if total is not None else {}))

        result = work(status)
        _finish(progress, phase["bar"])
        return result


def _finish(progress: Progress, bar: TaskID) -> None:
    """End a phase's line: its bar full, its clock stopped."""
    if not next(task for task in progress.tasks if task.id == bar).fields.get("counted"):
        progress.update(bar, total=1, completed=1)
    progress.stop_task(bar)


class OptionGroup:
    """Options declared once, for every command that takes them: a command names the group as one parameter's
    default and receives ``build(**values)`` there (see :func:`grouped`)."""

    def __init__(self, build: Callable[..., Any], **options: tuple[Any, Any]):
        self.build = build
        self.options = options  # parameter name -> (type, typer.Option(...))

    def flag(self, name: str) -> str:
        """The command-line flag of one of the group's parameters (for messages)."""
        return self.options[name][1].param_decls[0]


def grouped(command: Callable) -> Callable:
    """The command as typer should see it: each parameter whose default is an :class:`OptionGroup` becomes that
    group's options, and the command is called with the group's built value in its place."""
    signature = inspect.signature(command, eval_str=True)
    groups = {name: p.default for name, p in signature.parameters.items() if isinstance(p.default, OptionGroup)}
    parameters = []
    for parameter in signature.parameters.values():
        if parameter.name not in groups:
            parameters.append(parameter)
            continue
        parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option,
                                         annotation=annotation)
                       for name, (annotation, option) in groups[parameter.name].options.items()]

    @functools.wraps(command)
    def call(**values: Any) -> Any:
        for name, group in groups.items():
            values[name] = group.build(**{option: values.pop(option) for option in group.options})
        return command(**values)

    call.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    call.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": signature.return_annotation}
    return call


def _judge_options(judge_model, judge_base_url, judge_mode, judge_engine):
    from embench.api import JudgeOptions

    return JudgeOptions(model=judge_model, base_url=judge_base_url, mode=judge_mode, engine=judge_engine)


JUDGE_OPTIONS = OptionGroup(
    _judge_options,
    judge_model=(Optional[str], typer.Option(None, "--judge-model", help="Default: the judges' own (their trained judge locally, default_model otherwise); in trained mode a trained judge folder.")),
    judge_base_url=(Optional[str], typer.Option(None, "--judge-base-url", help="OpenAI-compatible judge endpoint, comma-separated for several endpoints (requests are spread over them); without it the judges run locally.")),
    judge_mode=(Optional[str], typer.Option(None, "--judge-mode", help="logprob | exact | sampled | trained (default: logprob for endpoints; locally trained where the judges name a trained judge, else exact).")),
    judge_engine=(Optional[str], typer.Option(None, "--judge-engine", help="Local judge engine: hf | vllm (default: hf for exact, else vllm).")),
)
# vLLM engines only; a dict of EngineOptions fields (the same names), so that `EngineOptions(**parallel)` takes it.
PARALLEL_OPTIONS = OptionGroup(
    dict,
    tensor_parallel_size=(int, typer.Option(1, "--tensor-parallel-size", min=1, help="vLLM engines: GPUs each layer is split across.")),
    pipeline_parallel_size=(int, typer.Option(1, "--pipeline-parallel-size", min=1, help="vLLM engines: GPUs the layers are staged across.")),
    data_parallel_size=(int, typer.Option(1, "--data-parallel-size", min=1, help="vllm-server engine: model replicas (GPUs: tp x pp x dp).")),
)
