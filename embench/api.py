"""The Python API behind the CLI: flags in, validated objects out, then the same calls the CLI makes.

    from embench.api import GenerateSpec, run_generate
    result = run_generate(GenerateSpec(model="default", task="smoke", n=2).prepare())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from embench.engines import EngineOptions, check_engine
from embench.engines.base import KV_CACHE_GIB
from embench.errors import EmbenchError
from embench.generate import GenerateResult, ProgressCallback, generate
from embench.models import RemoteModel, ResolvedModel, resolve_model
from embench.prompts import Prompt, load_prompts
from embench.sampling import SamplingConfig
from embench.tasks import find_task


@dataclass
class PreparedGeneration:
    model: ResolvedModel | RemoteModel
    prompts: list[Prompt]
    prompts_source: str
    n: int
    sampling: SamplingConfig
    engine: str
    options: EngineOptions
    out: Path | None


@dataclass
class GenerateSpec:
    """What ``embench generate`` takes; ``None`` means the task's value, else embench's default."""

    model: str = "default"
    base: str | None = None
    prompts: Path | None = None
    task: str | None = None
    n: int | None = None
    out: Path | None = None
    engine: str = "vllm"
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    kv_cache_gib: float = KV_CACHE_GIB
    max_model_len: int = 2048
    dtype: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def prepare(self, status: Callable[[str], None] | None = None) -> PreparedGeneration:
        """Check every input (engine, prompts, n, model) before anything is loaded or written."""
        check_engine(self.engine)
        if (self.prompts is None) == (self.task is None):
            raise EmbenchError("give exactly one of --prompts FILE.jsonl or --task TASK")
        if self.prompts is not None:
            prompts, source, task_sampling, task_n = load_prompts(self.prompts), str(self.prompts), SamplingConfig(), 1
        else:
            task = find_task(self.task)
            prompts, source = task.prompts(), f"task:{task.id}@{task.version}#{task.sha256[:12]}"
            task_sampling, task_n = task.sampling, task.samples_per_question
        n = task_n if self.n is None else self.n
        if n < 1:
            raise EmbenchError(f"-n must be at least 1 (got {n})")
        overrides = {name: value for name, value in
                     dict(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                          seed=self.seed).items() if value is not None}
        try:
            sampling = SamplingConfig.model_validate({**task_sampling.model_dump(), **overrides})
            options = EngineOptions(dtype=self.dtype, max_model_len=self.max_model_len, kv_cache_gib=self.kv_cache_gib,
                                    base_url=self.base_url, api_key_env=self.api_key_env, concurrency=self.concurrency)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise EmbenchError(f"invalid setting {error['loc'][0]}: {error['msg']}") from None
        if self.engine == "openai":
            if not self.base_url:
                raise EmbenchError("--engine openai needs --base-url (an OpenAI-compatible endpoint)")
            model = RemoteModel(reference=self.model, base_url=self.base_url)
        else:
            if status:
                status(f"resolving model {self.model}")
            model = resolve_model(self.model, self.base, allow_pickle=self.allow_pickle,
                                  trust_remote_code=self.trust_remote_code)
        return PreparedGeneration(model=model, prompts=prompts, prompts_source=source, n=n, sampling=sampling,
                                  engine=self.engine, options=options, out=self.out)


def run_generate(prepared: PreparedGeneration, progress: ProgressCallback | None = None) -> GenerateResult:
    return generate(prepared.model, prepared.prompts, prepared.out, engine=prepared.engine, n=prepared.n,
                    sampling=prepared.sampling, options=prepared.options, prompts_source=prepared.prompts_source,
                    progress=progress)
