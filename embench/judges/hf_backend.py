"""A local judge on transformers, whose ``exact`` mode is one forward pass per judgment.

``exact`` asks: with what probability does the judge's reply *start with* the number n (its digits followed by
anything but another digit), or with a verdict word? These outputs are disjoint whatever the tokenizer does to
digits, so their probabilities are exact teacher-forced likelihoods and their expectation is exact.

All the continuations one judgment needs ("5", "57", "100", "REF"...) form a trie. The trie is packed behind the
judge prompt into a single sequence with a tree attention mask (each packed token sees the prompt and its own
ancestors only, at the position it would have on its own), so the prompt is computed once and shared by every
continuation, and a judgment costs one forward pass of prompt + ~100 tokens. The judge template's fixed head (its
instructions, when they come before the material) is computed once per judge and its keys and values reused.

Attention in that pass (bf16) goes through ``grouped_attention`` rather than SDPA's CPU kernel, which spent half of a
judgment's time on its ~400 x ~700 scores (see that function).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from embench.chat import ChatTemplate
from embench.errors import EmbenchError
from embench.hardware import cpu_dtype
from embench.judges.backends import JudgeBackend, JudgeOutcome, JudgeRequest, OutcomeCallback, local_judge_name
from embench.judges.scoring import (
    SCORE_STRINGS,
    JudgeMode,
    Reading,
    score_from_output_logprobs,
    score_from_text,
    score_from_top_logprobs,
)
from embench.models import ResolvedModel, load_causal_lm

TOP_LOGPROBS = 20
SAMPLED_MAX_TOKENS = 16
# A shorter shared head is not worth a separate pass and a cache copy.
MIN_SHARED_PREFIX = 16
# The judge network's attention implementation (registered with transformers): the exact pass through
# grouped_attention, every other call (the head, logprob and sampled modes, float32 judges) through SDPA as before.
JUDGE_ATTENTION = "embench_judge"


def grouped_attention(query, key, value, mask, scaling: float):
    """Attention of ``[batch, heads, q, dim]`` queries on ``[batch, key_heads, k, dim]`` keys and values under an
    additive ``[batch, 1, q, k]`` mask, heads grouped as transformers' ``repeat_kv`` groups them.

    The queries that share a key head are stacked into one matrix, so a layer costs two large matrix products per key
    head: 2.3x faster than SDPA's flash kernel for a judgment's scores in bf16 on this CPU. The keys are centred first:
    subtracting one vector from every key shifts each row of scores by a constant, which softmax ignores, and it keeps
    the scores small where keys share a large component, so rounding them to bf16 costs about the accuracy that
    SDPA's fp32 scores keep (measured against fp32 judgments; uncentred, the error doubled)."""
    import torch

    batch, heads, length, dim = query.shape
    groups = key.shape[1]
    per_group = heads // groups
    key = key - key.mean(dim=2, keepdim=True)
    # Scaling the queries rather than the scores touches ~10x fewer numbers (and 1/sqrt(64) is exact in bf16).
    scores = torch.matmul((query * scaling).reshape(batch, groups, per_group * length, dim), key.transpose(-1, -2))
    scores = scores.view(batch, groups, per_group, length, -1).add_(mask[:, :, None])
    weights = torch.softmax(scores, dim=-1).view(batch, groups, per_group * length, -1)
    return torch.matmul(weights, value).view(batch, heads, length, dim)


def _judge_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (attention_mask is None or attention_mask.dtype == torch.bool or query.dtype == torch.float32 or dropout
            or kwargs.get("softcap") or kwargs.get("sliding_window")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = module.scaling if scaling is None else scaling
    return grouped_attention(query, key, value, attention_mask, scale).transpose(1, 2), None


def _use_judge_attention(network) -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if network.config._attn_implementation != "sdpa":  # a model that asked for another kernel keeps it
        return
    AttentionInterface.register(JUDGE_ATTENTION, _judge_attention)
    AttentionMaskInterface.register(JUDGE_ATTENTION, sdpa_mask)
    network.set_attn_implementation(JUDGE_ATTENTION)


class HFJudgeBackend(JudgeBackend):
    modes = ("exact", "logprob", "sampled")

    def __init__(self, model: ResolvedModel, dtype: str = "auto"):
        """auto: bf16 where the hardware computes it natively (faster there, the same distribution to about 1e-2:
        the judge's answer is a score, not a reference computation), else fp32; "float32" compares against plain
        passes."""
        import torch

        self.model = model
        self.model_name = local_judge_name(model)
        self.template = ChatTemplate(model.base_path, model.trust_remote_code)
        self.tokenizer = self.template.tokenizer
        self.dtype = cpu_dtype(dtype)
        self.network = load_causal_lm(model, self.dtype)
        _use_judge_attention(self.network)
        self.attention = self.network.config._attn_implementation  # recorded with every result
        vocabulary = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        # Tokens that would extend a number: their text starts with a digit.
        self.digit_tokens = torch.tensor([i for i, token in enumerate(vocabulary)
                                          if self.tokenizer.convert_tokens_to_string([token])[:1].isdigit()])
        self._head_ids: dict[str, list[int]] = {}
        self._prefix_cache: dict[tuple[int, ...], object] = {}

    def info(self) -> dict:
        import transformers

        return {"backend": "hf", "judge_model": self.model_name, "transformers": transformers.__version__,
                "dtype": self.dtype, "attention": self.attention,
                "model": self.model.provenance(), "chat_template_sha256": self.template.sha256}

    def judge(self, requests: Sequence[JudgeRequest], mode: JudgeMode, reading: Reading,
              on_outcome: OutcomeCallback) -> None:
        if mode not in self.modes:
            raise EmbenchError(f"unknown judge mode '{mode}': choose one of {', '.join(self.modes)}")
        judge_one = {"exact": self._exact, "logprob": self._logprob, "sampled": self._sampled}[mode]
        for request in requests:
            on_outcome(judge_one(request, reading))

    def _logprob(self, request: JudgeRequest, reading: Reading) -> JudgeOutcome:
        import torch

        with torch.inference_mode():
            logits = self.network(input_ids=torch.tensor([self.template.user_turn_ids(request.prompt)]),
                                  logits_to_keep=1).logits[0, -1]
        top = torch.log_softmax(logits.float(), dim=-1).topk(TOP_LOGPROBS)
        pairs = [(self.tokenizer.decode([index]), value) for value, index in zip(top.values.tolist(), top.indices.tolist())]
        return JudgeOutcome(key=request.key, result=score_from_top_logprobs(pairs, reading),
                            raw={"top_logprobs": [[token, lp] for token, lp in pairs]})

    def _sampled(self, request: JudgeRequest, reading: Reading) -> JudgeOutcome:
        import torch
        from transformers import GenerationConfig

        ids = torch.tensor([self.template.user_turn_ids(request.prompt)])
        config = GenerationConfig(do_sample=False, max_new_tokens=SAMPLED_MAX_TOKENS,
                                  eos_token_id=self.template.eos_token_id, pad_token_id=self.template.eos_token_id)
        with torch.inference_mode():
            output = self.network.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        text = self.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)
        return JudgeOutcome(key=request.key, result=score_from_text(text, reading), raw={"text": text})

    def _paths(self, verdicts: Sequence[str]) -> dict[str, tuple[int, ...]]:
        return {text: tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                for text in (*SCORE_STRINGS, *verdicts)}

    def _shared_prefix(self, prompt: list[int], head: str):
        """How many leading tokens of ``prompt`` the template's fixed head covers, and their cached keys and values.

        The split depends only on the prompt and its template, never on which other judgments run alongside, so a
        resumed run computes every judgment exactly as an uninterrupted one."""
        import torch

        if not head:
            return 0, None
        head_ids = self._head_ids.get(head)
        if head_ids is None:
            head_ids = self._head_ids[head] = self.template.user_turn_ids(head)
        shared = 0
        for mine, theirs in zip(prompt[:-1], head_ids):  # the last prompt token stays in the judgment's own pass
            if mine != theirs:
                break
            shared += 1
        if shared < MIN_SHARED_PREFIX:
            return 0, None
        key = tuple(prompt[:shared])
        if key not in self._prefix_cache:
            with torch.inference_mode():
                output = self.network(input_ids=torch.tensor([prompt[:shared]]), use_cache=True, logits_to_keep=1)
            self._prefix_cache.clear()  # one template head at a time: judging runs judge by judge
            self._prefix_cache[key] = output.past_key_values
        return shared, self._prefix_cache[key]

    def _exact(self, request: JudgeRequest, reading: Reading) -> JudgeOutcome:
        import torch

        paths = self._paths(reading.verdicts)
        # Every non-empty prefix of every path is a trie node; a number's own full path is a node too, because
        # the probability that no further digit follows it is read there.
        nodes = sorted({path[:depth] for path in paths.values() for depth in range(1, len(path) + 1)},
                       key=lambda node: (len(node), node))
        index = {node: position for position, node in enumerate(nodes)}
        prompt = self.template.user_turn_ids(request.prompt)
        length = len(prompt)
        total = length + len(nodes)
        blocked = torch.finfo(self.network.dtype).min
        mask = torch.full((total, total), blocked, dtype=self.network.dtype)
        mask[:length, :length] = torch.triu(torch.full((length, length), blocked, dtype=self.network.dtype), 1)
        positions = list(range(length))
        for node, position in index.items():
            row = length + position
            mask[row, :length] = 0
            for depth in range(1, len(node) + 1):  # the node's ancestors and itself
                mask[row, length + index[node[:depth]]] = 0
            positions.append(length + len(node) - 1)
        ids = prompt + [node[-1] for node in nodes]
        # The template's fixed head comes from the cache; this pass computes the rest of the prompt and the trie.
        shared, head_cache = self._shared_prefix(prompt, request.shared_prefix)
        with torch.inference_mode():
            # Only the last prompt position and the trie nodes are read: the 49k-wide output layer runs on those
            # alone (it would otherwise cost about a fifth of the pass).
            logits = self.network(input_ids=torch.tensor([ids[shared:]]), attention_mask=mask[None, None, shared:],
                                  position_ids=torch.tensor([positions[shared:]]),
                                  past_key_values=copy.deepcopy(head_cache) if head_cache is not None else None,
                                  use_cache=head_cache is not None, logits_to_keep=len(nodes) + 1).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)

        def after(node: tuple[int, ...]):  # the next-token distribution once `node` has been produced
            return logprobs[0] if not node else logprobs[1 + index[node]]

        output_logprobs = {}
        for text, path in paths.items():
            total_logprob = sum(after(path[:depth])[path[depth]].item() for depth in range(len(path)))
            if text in SCORE_STRINGS:
                extends = torch.logsumexp(after(path)[self.digit_tokens], dim=0).exp().item()
                total_logprob += torch.log1p(torch.tensor(-min(extends, 1.0 - 1e-12))).item()
            output_logprobs[text] = total_logprob
        return JudgeOutcome(key=request.key, result=score_from_output_logprobs(output_logprobs, reading),
                            raw={"output_logprobs": output_logprobs})

    def close(self) -> None:
        self.network = None
