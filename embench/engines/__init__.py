"""Engines: one interface (``Engine``), four implementations, opened by name."""

from __future__ import annotations

import importlib.util

from embench.engines.base import PARALLEL_FLAGS, Completion, Engine, EngineOptions, GenerationRequest
from embench.errors import EmbenchError
from embench.models import RemoteModel, ResolvedModel

ENGINES = ("vllm", "vllm-server", "openai", "hf")
_NEEDS = {"vllm": "vllm", "vllm-server": "vllm", "openai": "openai", "hf": "transformers"}
_INSTALL_HINT = {
    "vllm": "install it with `pip install 'embench[cpu]'` on CPU or `pip install 'embench[gpu]'` with CUDA",
    "openai": "install it with `pip install openai`",
    "transformers": "install it with `pip install transformers peft`",
}

__all__ = ["ENGINES", "Completion", "Engine", "EngineOptions", "GenerationRequest", "check_engine", "check_parallel",
           "open_engine"]


def check_parallel(name: str, options: EngineOptions) -> None:
    """Parallel settings other than 1 only where the engine can use them, refused before any model loads."""
    for field, flag in PARALLEL_FLAGS.items():
        value = getattr(options, field)
        if value == 1:
            continue
        if name not in ("vllm", "vllm-server"):
            raise EmbenchError(f"engine '{name}' cannot use {flag} {value}: parallel settings are for the vllm and "
                               "vllm-server engines")
        if name == "vllm" and field == "data_parallel_size":
            # vLLM's offline LLM refuses it ("not supported for single-process usage and may hang").
            raise EmbenchError(f"engine 'vllm' (in-process) cannot use {flag} {value}: use --engine vllm-server")


def check_engine(name: str, options: EngineOptions | None = None) -> None:
    """Fail early, before any file is written, if an engine is unknown, its package is missing, or it cannot use
    ``options``' parallel settings."""
    if name not in ENGINES:
        raise EmbenchError(f"unknown engine '{name}': choose one of {', '.join(ENGINES)}")
    if options is not None:
        check_parallel(name, options)
    package = _NEEDS[name]
    try:
        installed = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as missing
        installed = False
    if not installed:
        raise EmbenchError(f"engine '{name}' needs the '{package}' package, which is not installed: {_INSTALL_HINT[package]}")


def open_engine(name: str, model: ResolvedModel | RemoteModel, options: EngineOptions) -> Engine:
    check_engine(name, options)
    if name == "openai":
        from embench.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(model.reference, options)
    if isinstance(model, RemoteModel):
        raise EmbenchError(f"engine '{name}' runs a local model; a served model name needs --engine openai")
    if name == "vllm":
        from embench.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, options)
    if name == "vllm-server":
        from embench.engines.vllm_server import VLLMServerEngine

        return VLLMServerEngine(model, options)
    from embench.engines.hf_engine import HFEngine

    return HFEngine(model, options)
