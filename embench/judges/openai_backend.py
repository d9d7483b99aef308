"""A judge behind any OpenAI-compatible chat-completions endpoint (a hosted API or a remote vLLM server), or several.

Requests run on one asyncio loop with at most ``concurrency`` in flight, spread over the endpoints, a retry
going to the next endpoint (``embench.engines.endpoints.EndpointRotation``). Retries are embench's own, not the
client's, so that every outcome records how many attempts it took and a request that keeps failing ends as
an outcome with an error (never an exception, never a coerced score): a long judging run survives a flaky
endpoint, and what failed can be judged again on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence

import openai

from embench.engines.endpoints import EndpointRotation, check_endpoints, retry_wait, retryable_status
from embench.errors import EmbenchError
from embench.judges.backends import JudgeBackend, JudgeOutcome, JudgeRequest, OutcomeCallback
from embench.judges.scoring import JudgeMode, Reading, score_from_text, score_from_top_logprobs

NO_LOGPROBS = ("the judge endpoint returned no logprobs, which logprob mode needs: "
               "use --judge-mode sampled (or exact with a local judge)")


def check_judge_endpoint(base_url: str, api_key_env: str = "OPENAI_API_KEY") -> tuple[str, ...]:
    """Every endpoint of ``base_url`` answers and takes the key: checked before any work (``score`` checks it
    before generating). Returns the endpoints."""
    return check_endpoints(base_url, api_key_env=api_key_env, what="judge endpoint", flag="--judge-base-url")


class OpenAIJudgeBackend(JudgeBackend):
    """Judges with ``model`` at ``base_url`` (one endpoint or several, comma-separated) in ``logprob`` (top-20
    logprobs of one token) or ``sampled`` mode."""

    modes: tuple[JudgeMode, ...] = ("logprob", "sampled")

    def __init__(self, model: str, base_url: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 32,
                 timeout: float = 60.0, max_attempts: int = 6, backoff_base: float = 0.5, backoff_cap: float = 30.0):
        if concurrency < 1 or max_attempts < 1:
            raise EmbenchError("the judge's concurrency and max attempts must each be at least 1")
        self.model_name = model
        self.base_url = base_url
        self.api_key = os.environ.get(api_key_env) or "EMPTY"
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.endpoints = check_judge_endpoint(base_url, api_key_env)
        self.rotation = EndpointRotation(len(self.endpoints), cooldown_base=backoff_base, cooldown_cap=backoff_cap)

    def info(self) -> dict:
        return {"backend": "openai", "judge_model": self.model_name, "base_url": self.base_url,
                "endpoints": list(self.endpoints), "openai": openai.__version__, "concurrency": self.concurrency}

    def judge(self, requests: Sequence[JudgeRequest], mode: JudgeMode, reading: Reading,
              on_outcome: OutcomeCallback) -> None:
        if mode not in self.modes:
            raise EmbenchError(f"judge mode {mode!r} needs a local judge: use --judge-engine vllm or hf "
                               "(an OpenAI-compatible endpoint supports logprob and sampled)")
        if requests:
            asyncio.run(self._judge_all(requests, mode, reading, on_outcome))

    async def _judge_all(self, requests: Sequence[JudgeRequest], mode: JudgeMode, reading: Reading,
                         on_outcome: OutcomeCallback) -> None:
        pending = enumerate(requests)  # shared by the workers; taking the next request never awaits, so no lock
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(openai.AsyncOpenAI(
                base_url=url, api_key=self.api_key, max_retries=0, timeout=self.timeout)) for url in self.endpoints]

            async def worker() -> None:
                for index, request in pending:
                    on_outcome(await self._judge_one(clients, index, request, mode, reading))

            workers = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(requests)))]
            try:
                done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            finally:  # an error (no logprobs, a failing callback) or an interrupt aborts the requests in flight
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
            for task in done:
                task.result()

    async def _judge_one(self, clients: list[openai.AsyncOpenAI], index: int, request: JudgeRequest,
                         mode: JudgeMode, reading: Reading) -> JudgeOutcome:
        params = dict(max_tokens=1, logprobs=True, top_logprobs=20) if mode == "logprob" else dict(max_tokens=16)
        attempt, wait, tried = 0, 0.0, set()
        while True:
            attempt += 1
            endpoint = self.rotation.pick(index, attempt)
            if endpoint in tried:  # back at an endpoint that failed this request: back off first
                await asyncio.sleep(wait)
            tried.add(endpoint)
            try:
                response = await clients[endpoint].chat.completions.create(
                    model=self.model_name, messages=[{"role": "user", "content": request.prompt}],
                    temperature=0, seed=0, **params)
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                status = error.status_code if isinstance(error, openai.APIStatusError) else None
                if status is None:
                    self.rotation.unreachable(endpoint)
                if not retryable_status(status) or attempt == self.max_attempts:
                    message = " ".join(str(error).split())[:300]
                    return JudgeOutcome(key=request.key, result=None, error=f"{type(error).__name__}: {message}",
                                        attempts=attempt)
                wait = retry_wait(error, attempt, self.backoff_base, self.backoff_cap)
                continue
            self.rotation.reached(endpoint)
            choice = response.choices[0]
            if mode == "sampled":
                text = choice.message.content or ""
                return JudgeOutcome(key=request.key, result=score_from_text(text, reading), raw={"text": text},
                                    attempts=attempt)
            if choice.logprobs is None or not choice.logprobs.content:
                raise EmbenchError(NO_LOGPROBS)
            pairs = [(top.token, top.logprob) for top in choice.logprobs.content[0].top_logprobs]
            return JudgeOutcome(key=request.key, result=score_from_top_logprobs(pairs, reading),
                                raw={"top_logprobs": [list(pair) for pair in pairs]}, attempts=attempt)
