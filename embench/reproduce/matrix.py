"""Running a plan: the base model, then every unfinished cell (train -> score -> publish -> cell.json), then the
comparison."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import embench
from embench.errors import EmbenchError
from embench.files import embench_git_sha, now, write_json_atomic, write_text_atomic
from embench.hashing import sha256_file
from embench.layout import BOARD_FILE, REPRODUCE_FILE, SUITE_FILE, TRAIN_FILE
from embench.progress import Status
from embench.reproduce.comparison import write_comparison
from embench.reproduce.plan import Cell, ReproducePlan, ReproduceResult
from embench.results import TrainRecord
from embench.runs import lock_run


def run_reproduce(plan: ReproducePlan, progress: Status | None = None) -> ReproduceResult:
    """The base model and every cell not finished yet (one after another here, or as Ray tasks with ``--executor
    ray``); then the comparison over every finished cell. Cells that fail on Ray leave the others running and are
    named in one error at the end, after the comparison: the next run resumes them."""
    say = progress or (lambda text, done, total: None)
    out = plan.out
    if plan.score.judge_base_url is not None:  # before hours of training, not at the first cell's judging
        from embench.judges.openai_backend import check_judge_endpoint

        check_judge_endpoint(plan.score.judge_base_url)
    lock = lock_run(out)
    try:
        _write_record(plan)
        result = ReproduceResult(out=out)
        everything = [plan.base, *plan.cells]
        result.finished_before = [cell.label for cell in everything if cell.finished]
        todo = [cell for cell in everything if not cell.finished]

        def finish(cell: Cell, record: dict[str, Any], seconds: float) -> None:
            say(f"{cell.label}: publishing", 0, None)
            _finish_cell(plan, cell, record)
            result.ran.append(cell.label)
            result.seconds[cell.label] = seconds

        failed: dict[str, str] = {}
        if plan.spec.executor == "ray":
            from embench.reproduce.ray_executor import run_cells_on_ray

            failed = run_cells_on_ray(plan, todo, finish, say)
        else:
            for cell in todo:
                started = time.perf_counter()
                record = train_and_score(plan, cell, say)
                finish(cell, record, time.perf_counter() - started)
        say("comparison", 0, None)
        result.comparison = write_comparison(plan)
        if failed:
            raise EmbenchError(f"{len(failed)} cell(s) failed, the others are finished and published: "
                               + "; ".join(f"{label}: {why}" for label, why in failed.items())
                               + ". Run the same command again to resume them")
        return result
    finally:
        lock.close()


def _write_record(plan: ReproducePlan) -> None:
    """``reproduce.json`` (once: it says what the folder holds) and ``suite.yaml`` (the same text every time)."""
    import yaml

    record = plan.out / REPRODUCE_FILE
    if not record.is_file():
        write_json_atomic(record, {
            "fingerprint": plan.fingerprint, "created": now(),
            "preset": {"id": plan.preset.id, "version": plan.preset.version, "file": str(plan.preset_path),
                       "sha256": sha256_file(plan.preset_path), "content": plan.preset.model_dump(mode="json")},
            "score": plan.score.model_dump(mode="json"), "suite": plan.suite,
            "embench_version": embench.__version__, "embench_git_sha": embench_git_sha()})
    text = (f"# Written by embench reproduce (preset {plan.preset.id}): every cell is scored on this suite.\n"
            + yaml.safe_dump(plan.suite, sort_keys=False))
    write_text_atomic(plan.out / SUITE_FILE, text)


def train_and_score(plan: ReproducePlan, cell: Cell, say: Status) -> dict[str, Any]:
    """Train (the trainer resumes or finds its run complete) and score (resumes): the cell's record so far. Runs in
    a Ray task too, so it writes only inside the cell's folder."""
    from embench.train.trainer import train

    record: dict[str, Any] = {"cell": cell.label, "dataset": cell.dataset.name if cell.dataset else None,
                              "defense": cell.defense, "seed": cell.seed, "started": now()}
    if cell.config is not None:
        started = time.perf_counter()
        trained = train(cell.config, cell.adapter,
                        progress=lambda text, done, total: say(f"{cell.label}: {text}", done, total))
        train_record = TrainRecord.load(cell.adapter / TRAIN_FILE)
        record["train"] = {"out": cell.adapter.relative_to(plan.out).as_posix(), "steps": trained.total_steps,
                           "final_loss": trained.final_loss, "fingerprint": train_record.fingerprint,
                           "data_sha256": train_record.data.sha256, "seconds": time.perf_counter() - started}
    started = time.perf_counter()
    results_path = _score(plan, str(cell.adapter) if cell.config is not None else plan.preset.model, cell, say).results_path
    record["score"] = {"out": cell.score_dir.relative_to(plan.out).as_posix(),
                       "results_sha256": sha256_file(results_path), "seconds": time.perf_counter() - started}
    return record


def _finish_cell(plan: ReproducePlan, cell: Cell, record: dict[str, Any]) -> None:
    """Publish, then write the marker; only ever in the process that holds the reproduction folder, so the board has
    one writer at a time."""
    from embench.leaderboard import Tags

    tags = Tags(defense=cell.defense, training_data=cell.dataset.name if cell.dataset else None,
                organization="embench reproduce")
    record["leaderboard"] = {"evaluation_id": _publish(plan.board, cell.score_dir, tags)}
    record["finished"] = now()
    write_json_atomic(cell.marker, record)


def _score(plan: ReproducePlan, checkpoint: str, cell: Cell, say: Status):
    from embench.score import ScoreSpec, prepare_score, run_score

    score = plan.score
    spec = ScoreSpec(checkpoint=checkpoint, suite=str(plan.out / SUITE_FILE), samples=score.samples,
                     max_tokens=score.max_tokens, engine=score.engine, judge_model=score.judge_model,
                     judge_base_url=score.judge_base_url, judge_mode=score.judge_mode, judge_engine=score.judge_engine,
                     out=cell.score_dir, options=score.engine_options())
    return run_score(prepare_score(spec), status=lambda text, done, total: say(f"{cell.label}: {text}", done, total))


def _publish(board: Path, score_dir: Path, tags) -> str:
    """Publish one score directory, unless an earlier run, stopped before its marker, already did."""
    from embench.leaderboard import convert, load_board, publish, render_board

    evaluation_id = convert(score_dir, tags).entry.evaluation_id
    if (board / BOARD_FILE).is_file() and evaluation_id in {row.evaluation_id for row in load_board(board).entries}:
        return evaluation_id
    publish(board, [score_dir], tags)
    render_board(board)
    return evaluation_id
