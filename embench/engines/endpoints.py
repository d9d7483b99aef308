"""Several OpenAI-compatible endpoints behind one base URL, and the retry policy of the clients that use them.

A base URL may list endpoints, comma-separated (``http://a:8000/v1,http://b:8000/v1``); it stays one string
wherever it is passed and recorded, and is split only here. The openai engine and the openai judge backend
both spread requests over the endpoints, fail over to the next one on a retryable error and back off the same
way. Nothing here imports openai, which the openai engine needs only once it is chosen.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from embench.errors import EmbenchError

RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every status >= 500


def split_base_urls(value: str) -> tuple[str, ...]:
    """The endpoints a base URL names: one URL, or several separated by commas."""
    urls = tuple(part.strip() for part in value.split(","))
    for url in urls:
        if not url:
            raise EmbenchError(f"the base URL {value!r} has an empty endpoint: separate endpoints with single "
                               "commas, e.g. http://a:8000/v1,http://b:8000/v1")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise EmbenchError(f"the endpoint {url!r} is not an http(s) URL: give it as e.g. http://host:8000/v1")
    duplicate = next((url for index, url in enumerate(urls) if url in urls[:index]), None)
    if duplicate is not None:
        raise EmbenchError(f"the endpoint {duplicate} is listed twice in the base URL {value!r}")
    return urls


def check_endpoints(base_url: str, *, api_key_env: str, what: str, flag: str) -> tuple[str, ...]:
    """Every endpoint of ``base_url`` answers and takes the key (``what`` and ``flag`` name it in errors)."""
    import openai

    urls = split_base_urls(base_url)
    api_key = os.environ.get(api_key_env) or "EMPTY"
    for url in urls:
        with openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=10.0) as client:
            try:
                client.models.list()
            except openai.APIConnectionError:
                raise EmbenchError(f"cannot reach the {what} at {url}: check {flag} and that the server is up") from None
            except openai.AuthenticationError:
                raise EmbenchError(f"the {what} at {url} refused the API key: set ${api_key_env}") from None
            except openai.APIStatusError:
                pass  # some endpoints do not list models; the endpoint answered, which is what is checked here
    return urls


def retryable_status(status: int | None) -> bool:
    """Whether a failed request is worth another attempt; ``None``: no response at all (unreachable, timed out)."""
    return status is None or status in RETRYABLE_STATUS or status >= 500


def retry_wait(error: Exception, attempt: int, base: float, cap: float) -> float:
    """Seconds before attempt ``attempt + 1``: the server's Retry-After (capped), else full-jitter backoff."""
    response = getattr(error, "response", None)
    retry_after = retry_after_seconds(response.headers.get("retry-after")) if response is not None else None
    if retry_after is not None:
        return min(retry_after, cap)
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def retry_after_seconds(header: str | None) -> float | None:
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


class EndpointRotation:
    """Which endpoint each attempt of a request goes to.

    Request ``index`` makes its first attempt at endpoint ``index % n`` (spreading the load round-robin) and each
    further attempt at the next endpoint (failover), so an endpoint that is down costs a request at most one
    failed attempt. An endpoint that could not be reached is also skipped for a while, the cooldown doubling with
    each such failure in a row up to ``cooldown_cap``, so that requests stop trying it while it is down; when every
    endpoint is cooling down, the one whose cooldown ends first is tried. Safe to share between threads.
    """

    def __init__(self, count: int, *, cooldown_base: float, cooldown_cap: float):
        self.count = count
        self.cooldown_base = cooldown_base
        self.cooldown_cap = cooldown_cap
        self._until = [0.0] * count  # time.monotonic() at which each endpoint's cooldown ends
        self._failures = [0] * count  # each endpoint's failures to connect in a row
        self._lock = threading.Lock()

    def pick(self, index: int, attempt: int) -> int:
        order = [(index + attempt - 1 + step) % self.count for step in range(self.count)]
        now = time.monotonic()
        with self._lock:
            return next((endpoint for endpoint in order if self._until[endpoint] <= now),
                        min(order, key=self._until.__getitem__))

    def unreachable(self, endpoint: int) -> None:
        with self._lock:
            self._failures[endpoint] += 1
            cooldown = min(self.cooldown_cap, self.cooldown_base * 2 ** (self._failures[endpoint] - 1))
            self._until[endpoint] = time.monotonic() + cooldown

    def reached(self, endpoint: int) -> None:
        with self._lock:
            self._failures[endpoint] = 0
            self._until[endpoint] = 0.0
