"""Which judge model and mode a command uses when the user does not say: one rule for score, judge, calibrate and
reproduce.

- An endpoint (``--judge-base-url``) judges in ``logprob`` mode, the published method.
- Locally, ``--judge-model`` naming a trained judge folder runs ``trained``, naming a model runs ``exact``.
- Without ``--judge-model``, judges that name a trained judge (``trained_judge`` in their file) run it in
  ``trained`` mode; the prompted local modes stay available with ``--judge-mode exact|logprob|sampled``.
- Otherwise a local judge model runs ``exact``.
The judge model is ``--judge-model``, else the judges' own (their trained judge folder in ``trained`` mode, their
``default_model`` otherwise), which must then be one for all the judges of a command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from embench.engines.base import EngineOptions
from embench.errors import EmbenchError
from embench.judges.backends import JudgeBackend
from embench.judges.scoring import JUDGE_MODES
from embench.judges.spec import JudgeSpec
from embench.judges.trained import TRAINED_MODE
from embench.layout import TRAINED_JUDGE_FILE

JUDGE_ENGINES = ("hf", "vllm")


def local_judge_engine(mode: str, engine: str | None) -> str:
    """The engine a local prompted judge runs on: the one given, else hf for ``exact`` (one forward pass per
    judgment) and vllm for the other modes."""
    return engine or ("hf" if mode == "exact" else "vllm")


@dataclass(frozen=True)
class JudgeSettings:
    """Everything that says which judge runs where, every default resolved (by :func:`judge_settings`)."""

    model: str  # a model reference, a served model name, or a trained judge folder
    mode: str
    base_url: str | None = None  # an OpenAI-compatible endpoint; None: the judge runs locally
    engine: str | None = None  # local prompted judges: hf | vllm (None: hf for exact, vllm otherwise)
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 32  # endpoint requests in flight

    @property
    def local_engine(self) -> str | None:
        """The engine a local prompted judge runs on (None for an endpoint or a trained judge)."""
        if self.base_url is not None or self.mode == TRAINED_MODE:
            return None
        return local_judge_engine(self.mode, self.engine)

    def open(self, options: EngineOptions = EngineOptions()) -> JudgeBackend:
        from embench.judges import open_judge_backend

        return open_judge_backend(self.model, mode=self.mode, base_url=self.base_url, engine=self.engine,
                                  api_key_env=self.api_key_env, concurrency=self.concurrency, options=options)


def check_mode(mode: str) -> str:
    if mode not in JUDGE_MODES:
        raise EmbenchError(f"unknown --judge-mode '{mode}': choose one of {', '.join(JUDGE_MODES)}")
    return mode


def default_mode(specs: Sequence[JudgeSpec], base_url: str | None, model: str | None = None) -> str:
    if base_url is not None:
        return "logprob"
    if model is not None:  # a named local judge: a trained judge folder runs trained, a model runs exact
        return TRAINED_MODE if (Path(model).expanduser() / TRAINED_JUDGE_FILE).is_file() else "exact"
    if specs and all(spec.trained_judge is not None for spec in specs):
        return TRAINED_MODE
    return "exact"


def judge_settings(specs: Sequence[JudgeSpec], *, model: str | None = None, mode: str | None = None,
                   base_url: str | None = None, engine: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                   concurrency: int = 32) -> JudgeSettings:
    """The settings for judging with ``specs``: what is given, every default resolved, bad values refused."""
    mode = check_mode(mode or default_mode(specs, base_url, model))
    if mode == TRAINED_MODE and base_url is not None:
        raise EmbenchError(f"--judge-mode {TRAINED_MODE} runs a local trained judge: leave out --judge-base-url")
    if engine is not None and engine not in JUDGE_ENGINES:
        raise EmbenchError(f"unknown --judge-engine '{engine}': choose {' or '.join(JUDGE_ENGINES)}")
    if concurrency < 1:
        raise EmbenchError(f"--concurrency must be at least 1 (got {concurrency})")
    given = dict(mode=mode, base_url=base_url, engine=engine, api_key_env=api_key_env, concurrency=concurrency)
    if model is not None:
        return JudgeSettings(model=model, **given)
    if mode == TRAINED_MODE:
        untrained = sorted(spec.key for spec in specs if spec.trained_judge is None)
        if untrained:
            raise EmbenchError(f"judge(s) {', '.join(untrained)} name no trained judge: pass --judge-model FOLDER "
                               "(a folder from `embench judges train`) or another --judge-mode")
        defaults = {spec.trained_judge for spec in specs}
    else:
        defaults = {spec.default_model for spec in specs}
    if len(defaults) > 1:
        raise EmbenchError(f"these judges default to different judge models ({sorted(defaults)}): pass --judge-model")
    return JudgeSettings(model=defaults.pop() if defaults else "default", **given)
