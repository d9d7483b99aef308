"""A local judge on the in-process vLLM engine: ``logprob`` and ``sampled`` modes.

``exact`` mode lives in the transformers backend (``hf_backend``), which scores all ~100 continuations of a
judge prompt in one forward pass with a tree attention mask. vLLM has no such mask: scoring each trie node as
its own request measured ~14 s per judgment on this CPU (against ~1 s), so it is not offered here.
"""

from __future__ import annotations

from collections.abc import Sequence

from embench.chat import ChatTemplate
from embench.engines.base import EngineOptions
from embench.engines.vllm_engine import build_llm, lora_request_for, vllm_version
from embench.errors import EmbenchError
from embench.judges.backends import JudgeBackend, JudgeOutcome, JudgeRequest, OutcomeCallback, local_judge_name
from embench.judges.scoring import (
    JudgeMode,
    Reading,
    score_from_text,
    score_from_top_logprobs,
)
from embench.models import ResolvedModel

TOP_LOGPROBS = 20
SAMPLED_MAX_TOKENS = 16
# Judgments sent to vLLM together: enough to batch well, few enough that results reach disk often.
JUDGMENTS_PER_BATCH = 16


class VLLMJudgeBackend(JudgeBackend):
    modes = ("logprob", "sampled")

    def __init__(self, model: ResolvedModel, options: EngineOptions = EngineOptions(), *, llm=None):
        """Pass ``llm`` to judge with an engine that is already loaded (the model under test judging itself)."""
        self.model = model
        self.model_name = local_judge_name(model)
        self.template = ChatTemplate(model.base_path, model.trust_remote_code)
        self.llm, self.settings = (llm, {"shared_engine": True}) if llm is not None else build_llm(model, options)
        self.lora_request = lora_request_for(model)

    def info(self) -> dict:
        return {"backend": "vllm", "judge_model": self.model_name, "vllm": vllm_version(),
                "model": self.model.provenance(), "chat_template_sha256": self.template.sha256, **self.settings}

    def judge(self, requests: Sequence[JudgeRequest], mode: JudgeMode, reading: Reading,
              on_outcome: OutcomeCallback) -> None:
        if mode not in self.modes:
            raise EmbenchError(f"the vLLM judge offers {', '.join(self.modes)}, not '{mode}': "
                               "use --judge-engine hf for exact mode")
        judge_batch = {"logprob": self._logprob, "sampled": self._sampled}[mode]
        for start in range(0, len(requests), JUDGMENTS_PER_BATCH):
            batch = requests[start:start + JUDGMENTS_PER_BATCH]
            for outcome in judge_batch(batch, reading):
                on_outcome(outcome)

    def _generate(self, prompts: list[list[int]], params: list):
        from vllm.inputs import TokensPrompt

        return self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False,
                                 lora_request=self.lora_request)

    def _logprob(self, batch: Sequence[JudgeRequest], reading: Reading) -> list[JudgeOutcome]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS, seed=0)
        outputs = self._generate([self.template.user_turn_ids(request.prompt) for request in batch], [params] * len(batch))
        outcomes = []
        for request, output in zip(batch, outputs):
            top = output.outputs[0].logprobs[0]
            pairs = [(entry.decoded_token, entry.logprob) for entry in top.values()]
            outcomes.append(JudgeOutcome(key=request.key, result=score_from_top_logprobs(pairs, reading),
                                         raw={"top_logprobs": [[token, lp] for token, lp in pairs]}))
        return outcomes

    def _sampled(self, batch: Sequence[JudgeRequest], reading: Reading) -> list[JudgeOutcome]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=SAMPLED_MAX_TOKENS, temperature=0.0, seed=0)
        outputs = self._generate([self.template.user_turn_ids(request.prompt) for request in batch], [params] * len(batch))
        return [JudgeOutcome(key=request.key, result=score_from_text(output.outputs[0].text, reading),
                             raw={"text": output.outputs[0].text}) for request, output in zip(batch, outputs)]

    def close(self) -> None:
        self.llm = None
