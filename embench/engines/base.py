"""The engine interface: turn generation requests into completions, yielding each as soon as it finishes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from embench.prompts import Message
from embench.sampling import SamplingConfig

KV_CACHE_GIB = 2.0
# EngineOptions field -> its command-line flag (the vLLM server takes the same flags).
PARALLEL_FLAGS = {"tensor_parallel_size": "--tensor-parallel-size", "pipeline_parallel_size": "--pipeline-parallel-size",
                  "data_parallel_size": "--data-parallel-size"}


class EngineOptions(BaseModel):
    """Settings of an engine that do not change what is asked, only how it is served."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    dtype: str | None = None  # None: each engine's documented default (vLLM: embench.hardware.vllm_dtype, hf fp32)
    max_model_len: int = Field(2048, ge=16)
    # vLLM on CPU, whose automatic sizing fails on this machine. 2 GiB holds ~46k float32 tokens of the bundled
    # model, ~130 em-core sequences at once: generation 16% faster than 0.5 GiB, 4 GiB no faster (bench/score.py).
    kv_cache_gib: float = Field(KV_CACHE_GIB, gt=0)
    batch_size: int = Field(16, ge=1)  # hf engine
    base_url: str | None = None  # openai engine
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)  # openai engines: requests in flight at once
    request_timeout: float = Field(300.0, gt=0)
    max_retries: int = Field(5, ge=0)
    server_start_timeout: float = Field(600.0, gt=0)
    # vLLM engines only (hf and openai refuse anything but 1): one engine then spans parallel_gpus GPUs.
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)

    @property
    def parallel(self) -> dict[str, int]:
        """The parallel settings as provenance records them."""
        return {"tensor": self.tensor_parallel_size, "pipeline": self.pipeline_parallel_size,
                "data": self.data_parallel_size}

    @property
    def parallel_gpus(self) -> int:
        """GPUs one engine with these settings occupies."""
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size


@dataclass(frozen=True)
class GenerationRequest:
    """One sample to draw. ``prompt_token_ids`` is the chat-template rendering; remote chat endpoints use ``messages``."""

    key: str
    messages: tuple[Message, ...]
    prompt_token_ids: tuple[int, ...] | None
    seed: int


@dataclass(frozen=True)
class Completion:
    key: str
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    extra: dict = field(default_factory=dict)


class Engine(ABC):
    """A generation backend. Use as a context manager so that servers and memory are released."""

    name: str

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingConfig) -> Iterator[Completion]:
        """Yield one completion per request, in completion order, as each finishes."""

    @abstractmethod
    def info(self) -> dict:
        """Engine name, version and settings, for provenance."""

    def close(self) -> None:
        """Release what the engine holds (a server process, memory)."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
