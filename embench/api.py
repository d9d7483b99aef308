"""The Python API behind the CLI: a spec (the flags), ``prepare`` (checks everything, loads no model, writes
nothing), then ``run_*`` (the work) returning a typed result.

    from embench.api import GenerateSpec, run_generate
    result = run_generate(GenerateSpec(model="default", task="smoke", n=2).prepare())
    results = run_judging(JudgeRunSpec(run_dir, ["aligned"], JudgeOptions()).prepare())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from embench.engines import EngineOptions, check_engine, check_parallel
from embench.engines.base import KV_CACHE_GIB
from embench.errors import EmbenchError
from embench.files import check_writable_file
from embench.generate import GenerateResult, ProgressCallback, check_sample_count, generate
from embench.judges import JudgeRegistry, JudgeSpec
from embench.judges.calibrate import (
    CalibrationItem,
    CalibrationReport,
    calibrate,
    load_calibration_set,
    resolve_calibration_set,
)
from embench.judges.judging import JudgeRunResult, check_run_dir, judge_run
from embench.judges.settings import JudgeSettings, judge_settings
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
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
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
        check_sample_count(n * len(prompts))
        overrides = {name: value for name, value in
                     dict(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                          seed=self.seed).items() if value is not None}
        try:
            sampling = SamplingConfig.model_validate({**task_sampling.model_dump(), **overrides})
            options = EngineOptions(dtype=self.dtype, max_model_len=self.max_model_len, kv_cache_gib=self.kv_cache_gib,
                                    base_url=self.base_url, api_key_env=self.api_key_env, concurrency=self.concurrency,
                                    tensor_parallel_size=self.tensor_parallel_size,
                                    pipeline_parallel_size=self.pipeline_parallel_size,
                                    data_parallel_size=self.data_parallel_size)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise EmbenchError(f"invalid setting {error['loc'][0]}: {error['msg']}") from None
        check_parallel(self.engine, options)
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


@dataclass
class JudgeOptions:
    """The judge flags every judging job shares; ``None`` means the default :func:`judge_settings` resolves."""

    model: str | None = None
    base_url: str | None = None
    mode: str | None = None
    engine: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 32

    def settings(self, specs: list[JudgeSpec]) -> JudgeSettings:
        return judge_settings(specs, model=self.model, mode=self.mode, base_url=self.base_url, engine=self.engine,
                              api_key_env=self.api_key_env, concurrency=self.concurrency)


@dataclass
class JudgeRunSpec:
    """What ``embench judge`` takes: judge the generations of a run directory with some judges."""

    run_dir: Path
    judges: list[str]
    judge: JudgeOptions
    judges_dir: Path | None = None

    def prepare(self) -> "PreparedJudging":
        """The run directory, the judges and the settings checked; no judge model is loaded yet."""
        check_run_dir(self.run_dir)
        registry = JudgeRegistry.default(self.judges_dir)
        specs = [registry.get(reference) for reference in self.judges]
        return PreparedJudging(run_dir=self.run_dir, specs=specs, settings=self.judge.settings(specs))


@dataclass
class PreparedJudging:
    run_dir: Path
    specs: list[JudgeSpec]
    settings: JudgeSettings


def run_judging(prepared: PreparedJudging, progress: Callable[[JudgeSpec, int, int], None] | None = None,
                finished: Callable[[JudgeSpec, JudgeRunResult], None] | None = None) -> dict[str, JudgeRunResult]:
    """Every judge over the run, on one backend, in turn (``finished`` hears of each as it ends); per judge key,
    what was judged, cached, reused or failed."""
    results = {}
    with prepared.settings.open() as backend:
        for spec in prepared.specs:
            advance = None if progress is None else (lambda done, total, spec=spec: progress(spec, done, total))
            results[spec.key] = judge_run(prepared.run_dir, spec, backend, prepared.settings.mode, progress=advance)
            if finished is not None:
                finished(spec, results[spec.key])
    return results


@dataclass
class CalibrateSpec:
    """What ``embench judges calibrate`` takes: a judge measured on a labelled calibration set."""

    judge_ref: str
    judge: JudgeOptions
    calibration_set: Path | None = None  # default: the judge's own set under judges/calibration/
    limit: int | None = None
    out: Path | None = None  # default: ./calibration-<id>-v<version>.json
    judges_dir: Path | None = None

    def prepare(self) -> "PreparedCalibration":
        """The judge, settings and set read and checked; no judge model is loaded yet."""
        if self.limit is not None and self.limit < 1:
            raise EmbenchError(f"--limit must be at least 1 (got {self.limit})")
        spec = JudgeRegistry.default(self.judges_dir).get(self.judge_ref)
        settings = self.judge.settings([spec])
        set_path = resolve_calibration_set(spec.id, self.calibration_set)
        items = load_calibration_set(set_path)[:self.limit]
        report = self.out or Path.cwd() / f"calibration-{spec.id}-v{spec.version}.json"
        check_writable_file(report)
        return PreparedCalibration(spec=spec, settings=settings, set_path=set_path, items=items, report_path=report)


@dataclass
class PreparedCalibration:
    spec: JudgeSpec
    settings: JudgeSettings
    set_path: Path
    items: list[CalibrationItem]
    report_path: Path


def run_calibration(prepared: PreparedCalibration,
                    progress: Callable[[int, int], None] | None = None) -> CalibrationReport:
    """Judge the set, measure, write the report to ``prepared.report_path`` and return it."""
    with prepared.settings.open() as backend:
        report = calibrate(prepared.spec, backend, prepared.settings.mode, prepared.items,
                           set_path=prepared.set_path, progress=progress)
    report.write(prepared.report_path)
    return report
