"""``generate``: prompts -> engine -> ``generations.jsonl`` in a resumable run directory."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from embench.chat import ChatTemplate
from embench.engines import Engine, EngineOptions, GenerationRequest, check_engine, open_engine
from embench.errors import EmbenchError
from embench.files import now
from embench.hashing import file_safe, sha256_json, sha256_text
from embench.layout import GENERATIONS_FILE
from embench.models import RemoteModel, ResolvedModel
from embench.prompts import Prompt
from embench.runs import Generation, RunDirectory, load_records
from embench.sampling import SamplingConfig

# Called once per finished sample with (done, total); the CLI drives a progress bar with it.
ProgressCallback = Callable[[int, int], None]


def sample_key(model: ResolvedModel | RemoteModel, rendered_prompt: str, sampling: SamplingConfig,
               sample_index: int) -> str:
    """The stable identity of one sample: the same weights, prompt, sampling and index give the same key."""
    return sha256_json({"model": model.identity, "prompt": rendered_prompt, "sampling": sampling.model_dump(),
                        "sample": sample_index})[:32]


def sample_seed(key: str) -> int:
    """Each sample's own seed, derived from its key, so a resumed or re-batched sample is drawn with the same seed.

    (The same text too in float32; in bf16, vLLM's rounding depends on the batch mix, so text can part at a near-tie.)
    """
    return int(key[:8], 16) & 0x7FFFFFFF


@dataclass
class PlannedSample:
    request: GenerationRequest
    prompt: Prompt
    sample_index: int
    prompt_sha256: str | None


@dataclass
class GenerateResult:
    run_dir: Path
    total: int
    generated: int
    reused: int


MAX_SAMPLES_PER_RUN = 1_000_000  # every key is planned in memory before the engine starts


def check_sample_count(total: int) -> None:
    """Refuse a run too large to plan (``-n 10**12``) at once, instead of planning keys for hours."""
    if total > MAX_SAMPLES_PER_RUN:
        raise EmbenchError(f"{total:,} samples asked for: one run plans at most {MAX_SAMPLES_PER_RUN:,}; lower -n "
                           "(or --samples) or split the prompts")


def plan_samples(model: ResolvedModel | RemoteModel, prompts: Sequence[Prompt], n: int | Mapping[str, int],
                 sampling: SamplingConfig) -> tuple[list[PlannedSample], str | None]:
    """Render every prompt once and derive the keys of its samples (``n`` per prompt, or per prompt id).

    Returns the chat-template hash too."""
    counts = n if isinstance(n, Mapping) else {prompt.id: n for prompt in prompts}
    if isinstance(n, int) and n < 1:
        raise EmbenchError(f"-n must be at least 1 (got {n})")
    check_sample_count(sum(counts.get(prompt.id, 0) for prompt in prompts))
    template = None if isinstance(model, RemoteModel) else ChatTemplate(model.base_path, model.trust_remote_code)
    planned = []
    for prompt in prompts:
        if template is None:
            rendered_text, token_ids, prompt_sha = sha256_json([m.model_dump() for m in prompt.messages]), None, None
        else:
            rendered = template.render(prompt)
            rendered_text, token_ids, prompt_sha = rendered.text, rendered.token_ids, sha256_text(rendered.text)
        for index in range(counts.get(prompt.id, 0)):
            key = sample_key(model, rendered_text, sampling, index)
            planned.append(PlannedSample(
                request=GenerationRequest(key=key, messages=prompt.messages, prompt_token_ids=token_ids,
                                          seed=sample_seed(key)),
                prompt=prompt, sample_index=index, prompt_sha256=prompt_sha,
            ))
    return planned, template.sha256 if template else None


def default_run_dir(model: ResolvedModel | RemoteModel, fingerprint: str) -> Path:
    """Where a run goes without ``--out``: named by its content, so the same command resumes the same run."""
    name = file_safe(model.name.lower())
    return Path("runs") / f"{name}-{fingerprint[:12]}"


def generate(model: ResolvedModel | RemoteModel, prompts: Sequence[Prompt], out: Path | None = None, *,
             engine: str = "vllm",
             n: int | Mapping[str, int] = 1, sampling: SamplingConfig = SamplingConfig(),
             options: EngineOptions = EngineOptions(),
             prompts_source: str = "inline", progress: ProgressCallback | None = None,
             open_backend: Engine | None = None) -> GenerateResult:
    """Generate ``n`` samples per prompt into the run directory ``out``, skipping samples already there.

    Without ``out``, the run goes to ``default_run_dir``. ``open_backend`` reuses an engine already loaded (a suite
    generates several tasks with one engine); it must be the engine named by ``engine``.
    Everything that can be checked is checked before the directory is touched, so bad input leaves no files.
    """
    check_engine(engine)
    planned, template_sha = plan_samples(model, prompts, n, sampling)
    prompts_sha = sha256_json([prompt.model_dump(mode="json") for prompt in prompts])
    config = {
        "model": model.provenance(),
        "engine": {"name": engine, "options": options.model_dump()},
        "chat_template_sha256": template_sha,
        "sampling": sampling.model_dump(),
        "seed": sampling.seed,
        "n": n,
        "prompts": {"source": prompts_source, "sha256": prompts_sha, "count": len(prompts)},
    }
    # n may grow between attempts (new keys are added); anything else changing makes it a different run.
    fingerprint = sha256_json({"model": model.identity, "engine": engine, "sampling": sampling.model_dump(),
                               "prompts": prompts_sha, "chat_template": template_sha})
    out = out or default_run_dir(model, fingerprint)
    RunDirectory.check_target(out, fingerprint)
    finished = load_records(out / GENERATIONS_FILE)
    todo = [sample for sample in planned if sample.request.key not in finished]
    reused = len(planned) - len(todo)
    if progress:
        progress(reused, len(planned))
    if not todo:
        with RunDirectory(out, config, fingerprint) as run:
            run.start({"name": engine, "skipped": "every sample was already generated"})
            run.set_status("complete", generated=0)
        return GenerateResult(out, len(planned), 0, reused)
    by_key = {sample.request.key: sample for sample in todo}
    # The engine opens before the run directory is created: an engine that cannot start leaves no files.
    engine_context = nullcontext(open_backend) if open_backend is not None else open_engine(engine, model, options)
    with engine_context as backend, RunDirectory(out, config, fingerprint) as run:
        run.start(backend.info())
        done = 0
        try:
            for completion in backend.generate([sample.request for sample in todo], sampling):
                sample = by_key[completion.key]
                run.generations.append(Generation(
                    key=completion.key, prompt_id=sample.prompt.id, sample_index=sample.sample_index,
                    seed=sample.request.seed, messages=sample.prompt.messages,
                    prompt_sha256=sample.prompt_sha256, completion=completion.text,
                    finish_reason=completion.finish_reason, prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens, metadata=sample.prompt.metadata,
                    created=now(),
                ).model_dump(mode="json"))
                done += 1
                if progress:
                    progress(reused + done, len(planned))
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            run.set_status(status, error=str(exc)[:500] or type(exc).__name__, generated=done)
            raise
        run.set_status("complete", generated=done)
    return GenerateResult(out, len(planned), done, reused)
