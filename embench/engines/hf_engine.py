"""The transformers + peft engine: slow, simple, and the reference the other engines are checked against."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from embench.engines.base import Completion, Engine, EngineOptions, GenerationRequest
from embench.models import ResolvedModel, load_causal_lm
from embench.sampling import SamplingConfig


class HFEngine(Engine):
    name = "hf"

    def __init__(self, model: ResolvedModel, options: EngineOptions):
        from transformers import AutoTokenizer

        self.dtype = options.dtype or "float32"
        self.tokenizer = AutoTokenizer.from_pretrained(model.base_path)
        self.network = load_causal_lm(model, self.dtype)
        self.options = options

    def info(self) -> dict:
        import torch
        import transformers

        return {"name": self.name, "version": transformers.__version__, "torch": torch.__version__,
                "dtype": self.dtype, "batch_size": self.options.batch_size}

    def _generation_config(self, sampling: SamplingConfig):
        from transformers import GenerationConfig

        # Built from scratch so that nothing is inherited from the checkpoint; top_k=0 disables the library's
        # default top-k of 50, which vLLM and the OpenAI API do not apply.
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        common = dict(max_new_tokens=sampling.max_tokens, min_new_tokens=sampling.min_tokens,
                      eos_token_id=self.tokenizer.eos_token_id, pad_token_id=pad)
        if sampling.greedy:
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                                **common)

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingConfig) -> Iterator[Completion]:
        import torch

        config = self._generation_config(sampling)
        pad = config.pad_token_id
        # Similar lengths batch together so that little compute goes to padding.
        ordered = sorted(requests, key=lambda request: len(request.prompt_token_ids))
        for start in range(0, len(ordered), self.options.batch_size):
            batch = ordered[start:start + self.options.batch_size]
            width = max(len(request.prompt_token_ids) for request in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, request in enumerate(batch):  # left padding: every row's continuation starts at `width`
                length = len(request.prompt_token_ids)
                ids[row, width - length:] = torch.tensor(request.prompt_token_ids)
                mask[row, width - length:] = 1
            # One generator per batch: hf samples are reproducible for the same batches, not per sample.
            torch.manual_seed(batch[0].seed)
            with torch.inference_mode():
                output = self.network.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for row, request in enumerate(batch):
                tokens = output[row, width:].tolist()
                finish = "length"
                if config.eos_token_id in tokens:
                    tokens = tokens[:tokens.index(config.eos_token_id)]
                    finish = "stop"
                yield Completion(key=request.key, text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                                 finish_reason=finish, prompt_tokens=len(request.prompt_token_ids),
                                 completion_tokens=len(tokens) + (finish == "stop"))

    def close(self) -> None:
        self.network = None
