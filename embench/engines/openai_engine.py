"""OpenAI-compatible endpoints: any ``--base-url`` (chat completions), with bounded concurrency and retries."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence

from embench.engines.base import Completion, Engine, EngineOptions, GenerationRequest
from embench.errors import EmbenchError
from embench.sampling import SamplingConfig


def openai_version() -> str:
    import openai

    return openai.__version__


class OpenAIEngine(Engine):
    """Sends each sample as its own request; at most ``options.concurrency`` are in flight.

    Against a foreign endpoint the conversation goes as chat messages and the endpoint applies its own chat
    template (recorded as unknown). The vLLM-server engine instead sends embench's rendered token ids to the
    completions endpoint, so that every local engine sees the same prompt.
    """

    name = "openai"

    def __init__(self, served_model: str, options: EngineOptions, *, send_token_ids: bool = False):
        from openai import OpenAI

        if not options.base_url:
            raise EmbenchError("the openai engine needs --base-url (an OpenAI-compatible endpoint, e.g. http://host/v1)")
        self.served_model = served_model
        self.send_token_ids = send_token_ids
        self.options = options
        self.client = OpenAI(base_url=options.base_url, api_key=os.environ.get(options.api_key_env) or "EMPTY",
                             timeout=options.request_timeout, max_retries=options.max_retries)
        self._check_reachable()

    def _check_reachable(self) -> None:
        import openai

        try:
            self.client.with_options(max_retries=0, timeout=10.0).models.list()
        except openai.APIConnectionError:
            raise EmbenchError(
                f"cannot reach the endpoint at {self.options.base_url}: check --base-url and that the server is up"
            ) from None
        except openai.AuthenticationError:
            raise EmbenchError(
                f"the endpoint at {self.options.base_url} refused the API key: set ${self.options.api_key_env}"
            ) from None
        except openai.APIStatusError:
            pass  # some endpoints do not list models; the endpoint answered, which is what is checked here

    def info(self) -> dict:
        return {"name": self.name, "version": openai_version(), "client": "openai", "base_url": self.options.base_url,
                "served_model": self.served_model, "concurrency": self.options.concurrency}

    def _one(self, request: GenerationRequest, sampling: SamplingConfig) -> Completion:
        common = dict(model=self.served_model, temperature=sampling.temperature, top_p=sampling.top_p,
                      max_tokens=sampling.max_tokens, seed=request.seed, n=1)
        if sampling.min_tokens:  # not an OpenAI parameter: vLLM's server and others read it from the body
            common["extra_body"] = {"min_tokens": sampling.min_tokens}
        if self.send_token_ids:
            response = self.client.completions.create(prompt=list(request.prompt_token_ids), **common)
            choice = response.choices[0]
            text = choice.text
        else:
            messages = [message.model_dump() for message in request.messages]
            response = self.client.chat.completions.create(messages=messages, **common)
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
        for request in requests:
            todo.put(request)
        done: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                try:
                    request = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put(self._one(request, sampling))
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
