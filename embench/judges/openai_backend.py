"""A judge behind any OpenAI-compatible chat-completions endpoint (a hosted API or a remote vLLM server).

Requests run on one asyncio loop with at most ``concurrency`` in flight. Retries are embench's own, not the
client's, so that every outcome records how many attempts it took and a request that keeps failing ends as
an outcome with an error (never an exception, never a coerced score): a long judging run survives a flaky
endpoint, and what failed can be judged again on resume.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections.abc import Sequence
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import openai

from embench.errors import EmbenchError
from embench.judges.backends import JudgeBackend, JudgeOutcome, JudgeRequest, OutcomeCallback
from embench.judges.scoring import JudgeMode, Reading, score_from_text, score_from_top_logprobs

RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every status >= 500
NO_LOGPROBS = ("the judge endpoint returned no logprobs, which logprob mode needs: "
               "use --judge-mode sampled (or exact with a local judge)")


def check_judge_endpoint(base_url: str, api_key_env: str = "OPENAI_API_KEY") -> None:
    """The endpoint answers and takes the key: checked before any work (``score`` checks it before generating)."""
    api_key = os.environ.get(api_key_env) or "EMPTY"
    with openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=10.0) as client:
        try:
            client.models.list()
        except openai.APIConnectionError:
            raise EmbenchError(f"cannot reach the judge endpoint at {base_url}: "
                               "check --judge-base-url and that the server is up") from None
        except openai.AuthenticationError:
            raise EmbenchError(f"the judge endpoint at {base_url} refused the API key: set ${api_key_env}") from None
        except openai.APIStatusError:
            pass  # some endpoints do not list models; the endpoint answered, which is what is checked here


class OpenAIJudgeBackend(JudgeBackend):
    """Judges with ``model`` at ``base_url`` in ``logprob`` (top-20 logprobs of one token) or ``sampled`` mode."""

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
        check_judge_endpoint(base_url, api_key_env)

    def info(self) -> dict:
        return {"backend": "openai", "judge_model": self.model_name, "base_url": self.base_url,
                "openai": openai.__version__, "concurrency": self.concurrency}

    def judge(self, requests: Sequence[JudgeRequest], mode: JudgeMode, reading: Reading,
              on_outcome: OutcomeCallback) -> None:
        if mode not in self.modes:
            raise EmbenchError(f"judge mode {mode!r} needs a local judge: use --judge-engine vllm or hf "
                               "(an OpenAI-compatible endpoint supports logprob and sampled)")
        if requests:
            asyncio.run(self._judge_all(requests, mode, reading, on_outcome))

    async def _judge_all(self, requests: Sequence[JudgeRequest], mode: JudgeMode, reading: Reading,
                         on_outcome: OutcomeCallback) -> None:
        pending = iter(requests)  # shared by the workers; taking the next request never awaits, so no lock
        async with openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0,
                                      timeout=self.timeout) as client:

            async def worker() -> None:
                for request in pending:
                    on_outcome(await self._judge_one(client, request, mode, reading))

            workers = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(requests)))]
            try:
                done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            finally:  # an error (no logprobs, a failing callback) or an interrupt aborts the requests in flight
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
            for task in done:
                task.result()

    async def _judge_one(self, client: openai.AsyncOpenAI, request: JudgeRequest, mode: JudgeMode,
                         reading: Reading) -> JudgeOutcome:
        params = dict(max_tokens=1, logprobs=True, top_logprobs=20) if mode == "logprob" else dict(max_tokens=16)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await client.chat.completions.create(
                    model=self.model_name, messages=[{"role": "user", "content": request.prompt}],
                    temperature=0, seed=0, **params)
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                retryable = not isinstance(error, openai.APIStatusError) or (
                    error.status_code in RETRYABLE_STATUS or error.status_code >= 500)
                if not retryable or attempt == self.max_attempts:
                    message = " ".join(str(error).split())[:300]
                    return JudgeOutcome(key=request.key, result=None, error=f"{type(error).__name__}: {message}",
                                        attempts=attempt)
                await asyncio.sleep(self._wait(error, attempt))
                continue
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

    def _wait(self, error: openai.APIError, attempt: int) -> float:
        """Seconds before the next attempt: the server's Retry-After (capped), else full-jitter backoff."""
        response = getattr(error, "response", None)
        retry_after = _retry_after_seconds(response.headers.get("retry-after")) if response is not None else None
        if retry_after is not None:
            return min(retry_after, self.backoff_cap)
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))


def _retry_after_seconds(header: str | None) -> float | None:
    """A Retry-After header (delay in seconds, or an HTTP date) as seconds from now; None when absent or unreadable."""
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return None
        seconds = (when.replace(tzinfo=when.tzinfo or timezone.utc) - datetime.now(timezone.utc)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None
