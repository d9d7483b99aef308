"""OpenAI-compatible endpoints: any ``--base-url`` (chat completions), or several, with bounded concurrency and
retries that fail over from one endpoint to the next."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from embench.engines.base import Completion, Engine, EngineOptions, GenerationRequest
from embench.engines.endpoints import EndpointRotation, check_endpoints, retry_wait, retryable_status
from embench.errors import EmbenchError
from embench.sampling import SamplingConfig

if TYPE_CHECKING:
    from openai import OpenAI

# The openai client's own first retry delay, from when this engine left retrying to it; Retry-After is honoured
# up to a minute, as a rate-limited hosted API asks.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 60.0


def openai_version() -> str:
    import openai

    return openai.__version__


class OpenAIEngine(Engine):
    """Sends each sample as its own request; at most ``options.concurrency`` are in flight.

    Against a foreign endpoint the conversation goes as chat messages and the endpoint applies its own chat
    template (recorded as unknown). The vLLM-server engine instead sends embench's rendered token ids to the
    completions endpoint, so that every local engine sees the same prompt.

    ``options.base_url`` may list several endpoints, comma-separated: requests are spread over them and a retry
    goes to the next one (``EndpointRotation``), within ``options.max_retries`` retries in all.
    """

    name = "openai"

    def __init__(self, served_model: str, options: EngineOptions, *, send_token_ids: bool = False):
        from openai import OpenAI

        if not options.base_url:
            raise EmbenchError("the openai engine needs --base-url (an OpenAI-compatible endpoint, e.g. http://host/v1)")
        self.served_model = served_model
        self.send_token_ids = send_token_ids
        self.options = options
        self.endpoints = check_endpoints(options.base_url, api_key_env=options.api_key_env, what="endpoint",
                                         flag="--base-url")
        # Retries are the engine's own, not the client's, so that a retry can go to another endpoint.
        api_key = os.environ.get(options.api_key_env) or "EMPTY"
        self.clients = [OpenAI(base_url=url, api_key=api_key, timeout=options.request_timeout, max_retries=0)
                        for url in self.endpoints]
        self.rotation = EndpointRotation(len(self.endpoints), cooldown_base=BACKOFF_BASE, cooldown_cap=BACKOFF_CAP)

    def info(self) -> dict:
        return {"name": self.name, "version": openai_version(), "client": "openai", "base_url": self.options.base_url,
                "endpoints": list(self.endpoints), "served_model": self.served_model, "concurrency": self.options.concurrency}

    def _one(self, index: int, request: GenerationRequest, sampling: SamplingConfig) -> Completion:
        """Request ``index``'s completion; the last error once it is not retryable or the retries are spent."""
        import openai

        attempt, wait, tried = 0, 0.0, set()
        while True:
            attempt += 1
            endpoint = self.rotation.pick(index, attempt)
            if endpoint in tried:  # back at an endpoint that failed this request: back off first
                time.sleep(wait)
            tried.add(endpoint)
            try:
                completion = self._ask(self.clients[endpoint], request, sampling)
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                status = error.status_code if isinstance(error, openai.APIStatusError) else None
                if status is None:
                    self.rotation.unreachable(endpoint)
                if not retryable_status(status) or attempt > self.options.max_retries:
                    raise
                wait = retry_wait(error, attempt, BACKOFF_BASE, BACKOFF_CAP)
                continue
            self.rotation.reached(endpoint)
            return completion

    def _ask(self, client: OpenAI, request: GenerationRequest, sampling: SamplingConfig) -> Completion:
        common = dict(model=self.served_model, temperature=sampling.temperature, top_p=sampling.top_p,
                      max_tokens=sampling.max_tokens, seed=request.seed, n=1)
        if sampling.min_tokens:  # not an OpenAI parameter: vLLM's server and others read it from the body
            common["extra_body"] = {"min_tokens": sampling.min_tokens}
        if self.send_token_ids:
            response = client.completions.create(prompt=list(request.prompt_token_ids), **common)
            choice = response.choices[0]
            text = choice.text
        else:
            messages = [message.model_dump() for message in request.messages]
            response = client.chat.completions.create(messages=messages, **common)
            choice = response.choices[0]
            text = choice.message.content or ""
        usage = response.usage
        return Completion(key=request.key, text=text, finish_reason=choice.finish_reason,
                          prompt_tokens=usage.prompt_tokens if usage else None,
                          completion_tokens=usage.completion_tokens if usage else None)

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingConfig) -> Iterator[Completion]:
        # Daemon worker threads rather than a ThreadPoolExecutor: on Ctrl-C the caller stops at once, instead of
        # waiting for every request in flight (the executor joins its threads, even at interpreter exit).
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for item in enumerate(requests):
            todo.put(item)
        done: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                try:
                    index, request = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put(self._one(index, request, sampling))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
                    done.put(exc)

        for _ in range(min(self.options.concurrency, len(requests))):
            threading.Thread(target=work, daemon=True).start()
        try:
            for _ in range(len(requests)):
                item = done.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
