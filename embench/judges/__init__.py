"""The LLM-judge layer: judge prompt files, their registry, scoring modes, backends, and judging runs.

    from embench import judges
    registry = judges.JudgeRegistry.default()
    spec = registry.get("aligned")
    judges.register(my_spec)                       # install a new judge prompt (a file, not a fork)
"""

from __future__ import annotations

from embench.engines.base import EngineOptions
from embench.errors import EmbenchError
from embench.judges.backends import JudgeBackend, JudgeOutcome, JudgeRequest
from embench.judges.registry import JudgeRegistry, register
from embench.judges.scoring import JUDGE_MODES, Reading, ScoreResult
from embench.judges.spec import JudgeSpec, load_judge_file

__all__ = ["JUDGE_MODES", "JudgeBackend", "JudgeOutcome", "JudgeRegistry", "JudgeRequest", "JudgeSpec", "Reading",
           "ScoreResult", "load_judge_file", "open_judge_backend", "register"]


def open_judge_backend(judge_model: str, *, mode: str, base_url: str | None = None, engine: str | None = None,
                       api_key_env: str = "OPENAI_API_KEY", concurrency: int = 32,
                       options: EngineOptions = EngineOptions()) -> JudgeBackend:
    """A judge on an OpenAI-compatible endpoint when ``base_url`` is given, else a local model.

    Locally, ``trained`` runs a trained judge folder (``judge_model`` is that folder), ``exact`` runs on
    transformers (one forward pass per judgment) and the other modes on vLLM, unless ``engine`` ("vllm" or "hf")
    says otherwise.
    """
    if mode == "trained":
        from embench.judges.trained import TrainedJudgeBackend, load_trained_judge

        if base_url is not None:
            raise EmbenchError("a trained judge runs locally: leave out --judge-base-url")
        return TrainedJudgeBackend(load_trained_judge(judge_model))
    if base_url is not None:
        from embench.judges.openai_backend import OpenAIJudgeBackend

        return OpenAIJudgeBackend(judge_model, base_url, api_key_env=api_key_env, concurrency=concurrency)
    from embench.engines import check_engine
    from embench.judges.settings import local_judge_engine
    from embench.models import resolve_model

    engine = local_judge_engine(mode, engine)
    check_engine(engine)
    model = resolve_model(judge_model)
    if engine == "hf":
        from embench.judges.hf_backend import HFJudgeBackend

        return HFJudgeBackend(model)
    from embench.judges.vllm_backend import VLLMJudgeBackend

    return VLLMJudgeBackend(model, options)
