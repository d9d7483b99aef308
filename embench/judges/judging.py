"""Judging a run: generations -> rendered judge prompts -> backend -> ``judgments.jsonl``, resumable and cached.

Each judgment is appended as it completes, keyed by (generation, judge identity), so a killed run re-does
nothing that finished and a re-run retries only judgments that failed. A disk cache under ``$EMBENCH_HOME``,
keyed by judge model, judge id/version/template hash, mode and the rendered prompt's hash, means the same
judgment is never paid for twice, across runs too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embench.errors import EmbenchError
from embench.files import now
from embench.hashing import file_safe, sha256_json, sha256_text
from embench.home import embench_home
from embench.judges.backends import JudgeBackend, JudgeOutcome, JudgeRequest
from embench.judges.scoring import JudgeMode, ScoreResult
from embench.judges.spec import JudgeSpec
from embench.judges.trained import TRAINED_MODE
from embench.layout import GENERATIONS_FILE, JUDGMENTS_FILE, RUN_FILE
from embench.runs import Generation, JsonlLog, lock_run, read_generations, read_judgments, read_run_record


@dataclass
class JudgeRunResult:
    judged: int
    cached: int
    reused: int
    failed: int
    total: int


def judge_inputs(generation: Generation) -> dict:
    """The template variables for one generation: the last user turn, the system prompt, the completion."""
    system = next((m.content for m in generation.messages if m.role == "system"), None)
    question = next(m.content for m in reversed(generation.messages) if m.role == "user")
    metadata = dict(generation.metadata)
    return {"question": question, "answer": generation.completion, "system": system,
            "reasoning": metadata.get("reasoning"), "metadata": metadata}


def judgment_record(outcome: JudgeOutcome, generation: Generation, identity: dict, prompt_sha256: str,
                    cached: bool) -> dict:
    result = outcome.result
    return {
        "key": sha256_json({"generation": generation.key, **identity})[:32],
        "generation_key": generation.key,
        "prompt_id": generation.prompt_id,
        "sample_index": generation.sample_index,
        **identity,
        "prompt_sha256": prompt_sha256,
        "status": "ok" if result is not None else "failed",
        "score": result.score if result else None,
        "verdict": result.verdict if result else None,
        "valid_mass": result.valid_mass if result else None,
        "distribution": result.distribution if result else None,
        "raw": outcome.raw,
        "error": outcome.error,
        "attempts": outcome.attempts,
        "cached": cached,
        "created": now(),
    }


def judgment_cache(judge_model: str) -> JsonlLog:
    name = file_safe(judge_model, keep="-_.@", replacement="_")
    folder = embench_home() / "judgment-cache"
    folder.mkdir(parents=True, exist_ok=True)
    return JsonlLog(folder / f"{name}.jsonl")


def _check_has_generations(run_dir: Path) -> None:
    if not (run_dir / GENERATIONS_FILE).is_file():
        raise EmbenchError(f"{run_dir} is not a run directory with generations: run `embench generate` first")


def check_run_dir(run_dir: Path) -> None:
    """A run directory whose records all read: a corrupt one is refused before a judge loads or a file is made."""
    _check_has_generations(run_dir)
    for _ in read_generations(run_dir):
        pass
    if not (run_dir / RUN_FILE).is_file():
        raise EmbenchError(f"{run_dir} has generations but no {RUN_FILE}: it is not a run directory of `embench "
                           "generate`")
    read_run_record(run_dir)
    read_judgments(run_dir)


def judge_run(run_dir: Path, judge: JudgeSpec, backend: JudgeBackend, mode: JudgeMode,
              progress: Callable[[int, int], None] | None = None) -> JudgeRunResult:
    """Judge every generation of ``run_dir`` with ``judge``; finished judgments are kept, failed ones retried."""
    _check_has_generations(run_dir)
    if mode not in backend.modes:
        raise EmbenchError(f"judge backend {backend.info()['backend']} does not offer mode '{mode}' "
                           f"(it offers: {', '.join(backend.modes)})")
    identity = judge.identity(backend.model_name, mode)
    with lock_run(run_dir):
        # Read once, under the lock: a corrupt record is refused here before the judgments file is opened.
        generations = list(read_generations(run_dir))
        log = JsonlLog(run_dir / JUDGMENTS_FILE)
        cache = judgment_cache(backend.model_name)
        try:
            return _judge(generations, judge, backend, mode, identity, log, cache, progress)
        finally:
            log.close()
            cache.close()


def _judge(generations, judge, backend, mode, identity, log, cache, progress) -> JudgeRunResult:
    pending: dict[str, tuple[Generation, str, str]] = {}  # cache key -> (generation, prompt sha, prompt)
    waiting: dict[str, list[Generation]] = {}  # generations whose rendered prompt is identical share a judgment
    reused = cached = 0
    for generation in generations:
        key = sha256_json({"generation": generation.key, **identity})[:32]
        if log.records.get(key, {}).get("status") == "ok":
            reused += 1
            continue
        prompt = judge.request_text(mode, **judge_inputs(generation))
        prompt_sha = sha256_text(prompt)
        cache_key = sha256_json({**identity, "prompt_sha256": prompt_sha})
        if cache_key in cache:
            hit = cache.records[cache_key]
            result = ScoreResult(score=hit["score"], verdict=hit["verdict"], valid_mass=hit["valid_mass"],
                                 distribution=hit["distribution"])
            outcome = JudgeOutcome(key=cache_key, result=result, raw=hit["raw"], attempts=0)
            log.append(judgment_record(outcome, generation, identity, prompt_sha, cached=True))
            cached += 1
            continue
        waiting.setdefault(cache_key, []).append(generation)
        pending.setdefault(cache_key, (generation, prompt_sha, prompt))
    total = len(generations)
    done = reused + cached
    failed = 0
    if progress:
        progress(done, total)

    def on_outcome(outcome: JudgeOutcome) -> None:
        nonlocal done, failed
        _, prompt_sha, _ = pending[outcome.key]
        for generation in waiting[outcome.key]:
            record = judgment_record(outcome, generation, identity, prompt_sha, cached=False)
            log.append(record)
            done += 1
            failed += record["status"] == "failed"
        if outcome.result is not None:
            cache.append({"key": outcome.key, **identity, "prompt_sha256": prompt_sha, "score": outcome.result.score,
                          "verdict": outcome.result.verdict, "valid_mass": outcome.result.valid_mass,
                          "distribution": outcome.result.distribution, "raw": outcome.raw, "created": now()})
        if progress:
            progress(done, total)

    head = "" if mode == TRAINED_MODE else judge.static_head
    requests = [JudgeRequest(key=cache_key, prompt=prompt, shared_prefix=head, judge_id=judge.id)
                for cache_key, (_, _, prompt) in pending.items()]
    if requests:
        backend.judge(requests, mode, judge.reading, on_outcome)
    judged = sum(len(waiting[key]) for key in pending) - failed
    return JudgeRunResult(judged=judged, cached=cached, reused=reused, failed=failed, total=total)
