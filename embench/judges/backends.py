"""Judge backends: who answers a rendered judge prompt, and how its answer is read in each mode."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from embench.judges.scoring import JudgeMode, Reading, ScoreResult
from embench.models import ResolvedModel


@dataclass(frozen=True)
class JudgeRequest:
    """One judgment to make: ``key`` identifies it (judge identity + rendered prompt + mode)."""

    key: str
    prompt: str  # the rendered judge prompt, sent as one user message
    shared_prefix: str = ""  # the judge template's fixed head, which a local backend may compute once for all
    judge_id: str | None = None  # which judge asks: a trained judge serves several from one forward pass


@dataclass(frozen=True)
class JudgeOutcome:
    key: str
    result: ScoreResult | None  # None when the judgment failed after every retry
    raw: dict = field(default_factory=dict)  # what the judge returned: top logprobs, output logprobs or text
    error: str | None = None
    attempts: int = 1


OutcomeCallback = Callable[[JudgeOutcome], None]


class JudgeBackend(ABC):
    """Answers judge prompts. ``judge`` calls ``on_outcome`` once per request, as each completes."""

    model_name: str
    modes: tuple[JudgeMode, ...]

    @abstractmethod
    def judge(self, requests: Sequence[JudgeRequest], mode: JudgeMode, reading: Reading,
              on_outcome: OutcomeCallback) -> None: ...

    @abstractmethod
    def info(self) -> dict:
        """Backend name, judge model and versions, for provenance."""

    def close(self) -> None:
        """Release what the backend holds."""

    def __enter__(self) -> "JudgeBackend":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def local_judge_name(model: ResolvedModel) -> str:
    """A local judge's name in judgments and cache keys: its weights, not the path they were loaded from."""
    adapter = f"+adapter:{model.adapter_sha256[:16]}" if model.adapter_sha256 else ""
    return f"{model.name}@sha256:{model.base_sha256[:16]}{adapter}"
