"""``generate``: prompts -> engine -> ``generations.jsonl`` in a resumable run directory."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

from embench.chat import ChatTemplate
from embench.engines import Completion, Engine, EngineOptions, GenerationRequest, check_engine, open_engine
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


@dataclass
class GenerationJob:
    """One run directory's share of a generation: its planned samples, and those not yet in ``generations.jsonl``.

    Planning writes nothing; several jobs (the tasks of a suite) can then be drawn in one engine submission."""

    out: Path
    config: dict
    fingerprint: str
    sampling: SamplingConfig
    planned: list[PlannedSample]
    todo: list[PlannedSample]

    @property
    def reused(self) -> int:
        return len(self.planned) - len(self.todo)


def plan_job(model: ResolvedModel | RemoteModel, prompts: Sequence[Prompt], out: Path | None = None, *,
             engine: str = "vllm", n: int | Mapping[str, int] = 1, sampling: SamplingConfig = SamplingConfig(),
             options: EngineOptions = EngineOptions(), prompts_source: str = "inline") -> GenerationJob:
    """Plan ``n`` samples per prompt into the run directory ``out`` (``default_run_dir`` without it) and find those
    still to draw. Everything that can be checked is checked here, before the directory is touched."""
    check_engine(engine, options)
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
    return GenerationJob(out=out, config=config, fingerprint=fingerprint, sampling=sampling, planned=planned,
                         todo=todo)


def run_jobs(jobs: Sequence[GenerationJob], backend: Engine | None,
             progress: ProgressCallback | None = None) -> list[GenerateResult]:
    """Draw every job's missing samples with ``backend``, in one engine submission per sampling configuration (one
    for a suite whose tasks share their sampling), so that the engine batches across run directories.

    Each completion is appended to its own run as it finishes; a sample key shared by two runs is drawn once.
    ``backend`` may be None when no job has a sample left to draw."""
    total = sum(len(job.planned) for job in jobs)
    done = sum(job.reused for job in jobs)
    if progress:
        progress(done, total)
    with ExitStack() as open_runs:
        runs = [open_runs.enter_context(RunDirectory(job.out, job.config, job.fingerprint)) for job in jobs]
        generated = [0] * len(jobs)
        for run, job in zip(runs, jobs):
            run.start(backend.info() if job.todo else {"name": job.config["engine"]["name"],
                                                       "skipped": "every sample was already generated"})
        try:
            for sampling, group in _by_sampling(jobs):
                owners: dict[str, list[tuple[int, PlannedSample]]] = {}
                for index in group:
                    for sample in jobs[index].todo:
                        owners.setdefault(sample.request.key, []).append((index, sample))
                requests = [samples[0][1].request for samples in owners.values()]
                for completion in backend.generate(requests, sampling):
                    for index, sample in owners[completion.key]:
                        runs[index].generations.append(_generation_record(sample, completion))
                        generated[index] += 1
                        done += 1
                    if progress:
                        progress(done, total)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            for run, count in zip(runs, generated):
                run.set_status(status, error=str(exc)[:500] or type(exc).__name__, generated=count)
            raise
        for run, count in zip(runs, generated):
            run.set_status("complete", generated=count)
    return [GenerateResult(job.out, len(job.planned), count, job.reused) for job, count in zip(jobs, generated)]


def _by_sampling(jobs: Sequence[GenerationJob]) -> list[tuple[SamplingConfig, list[int]]]:
    groups: dict[SamplingConfig, list[int]] = {}
    for index, job in enumerate(jobs):
        if job.todo:
            groups.setdefault(job.sampling, []).append(index)
    return list(groups.items())


def _generation_record(sample: PlannedSample, completion: Completion) -> dict:
    return Generation(
        key=completion.key, prompt_id=sample.prompt.id, sample_index=sample.sample_index, seed=sample.request.seed,
        messages=sample.prompt.messages, prompt_sha256=sample.prompt_sha256, completion=completion.text,
        finish_reason=completion.finish_reason, prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens, metadata=sample.prompt.metadata, created=now(),
    ).model_dump(mode="json")


def generate(model: ResolvedModel | RemoteModel, prompts: Sequence[Prompt], out: Path | None = None, *,
             engine: str = "vllm",
             n: int | Mapping[str, int] = 1, sampling: SamplingConfig = SamplingConfig(),
             options: EngineOptions = EngineOptions(),
             prompts_source: str = "inline", progress: ProgressCallback | None = None) -> GenerateResult:
    """Generate ``n`` samples per prompt into one run directory: :func:`plan_job`, then :func:`run_jobs` with the
    engine opened for it (not at all when every sample is already there)."""
    job = plan_job(model, prompts, out, engine=engine, n=n, sampling=sampling, options=options,
                   prompts_source=prompts_source)
    # The engine opens before the run directory is created: an engine that cannot start leaves no files.
    engine_context = open_engine(engine, model, options) if job.todo else nullcontext()
    with engine_context as backend:
        (result,) = run_jobs([job], backend, progress)
    return result

