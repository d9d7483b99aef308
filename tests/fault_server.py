"""A real OpenAI-compatible HTTP server on 127.0.0.1 that injects faults, for testing clients end to end.

Answers are deterministic functions of the prompt (the last message's content): see ``top_logprobs_for`` and
``text_for``. Faults are deterministic per (prompt, attempt), the attempt being how many requests the server
has seen for that prompt: a prompt picked to fault fails its first k attempts, then succeeds. A fault is one of

- ``"<status>"`` or ``"<status>:<retry-after>"``: an OpenAI-style error with that status (and Retry-After header);
- ``"hang"``: no answer for ``hang_seconds`` (set it past the client's timeout), then the connection closes;
- ``"drop"``: the connection closes without a response.

Use it as ``with FaultServer(fault_rate=0.3) as server: ... server.base_url ... server.stats``. The server
stops, and any hanging handler returns, when the block exits; ``server.stop()`` stops it earlier, as a crash
would: new connections are refused and open ones cut.
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REFUSAL_MARKER = "REFUSAL-CASE"  # a prompt containing it is answered with REFUSAL
ALWAYS_500_MARKER = "ALWAYS-500"  # a prompt containing it always gets a 500 (with always_fail=True)
DEFAULT_FAULTS = ("429:0", "500", "hang", "drop")


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def score_for(prompt: str) -> int:
    """The number the server answers ``prompt`` with (its most likely token), 0..100."""
    return _digest("score", prompt) % 101


def top_logprobs_for(prompt: str) -> list[tuple[str, float]]:
    """The top logprobs of the server's first output token for ``prompt``, most likely first."""
    if REFUSAL_MARKER in prompt:
        probs = [("REF", 0.7), ("0", 0.1), ("10", 0.1), ("I", 0.05)]
    else:
        score = score_for(prompt)  # +37 and +71 (mod 101) never collide with score or each other
        probs = [(str(score), 0.6), (str((score + 37) % 101), 0.25), (str((score + 71) % 101), 0.1), ("The", 0.05)]
    return [(token, math.log(p)) for token, p in probs]


def text_for(prompt: str) -> str:
    """The server's full text answer for ``prompt`` (what sampled mode reads)."""
    return "REFUSAL" if REFUSAL_MARKER in prompt else f"{score_for(prompt)}\n"


@dataclass
class FaultStats:
    """What the server saw, keyed by prompt. Read it after the client is done (writes take ``lock``)."""

    requests: Counter[str] = field(default_factory=Counter)  # chat-completion requests per prompt
    successes: Counter[str] = field(default_factory=Counter)  # 200 answers per prompt
    arrivals: dict[str, list[float]] = field(default_factory=dict)  # time.monotonic() of each request per prompt
    faults: Counter[str] = field(default_factory=Counter)  # injected faults per kind ("429:0", "hang", ...)
    models_requests: int = 0  # GET /v1/models
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def retried(self) -> int:
        """Requests beyond the first for their prompt."""
        return sum(count - 1 for count in self.requests.values() if count > 1)


class FaultServer:
    """An OpenAI-compatible server with injected faults.

    ``fault_rate``: the share of prompts whose first attempts fault; each such prompt faults on its first
    1..``max_faulty_attempts`` attempts, each attempt's fault drawn from ``faults``. ``scripted`` maps a prompt
    marker (a substring) to the faults of that prompt's first attempts, e.g. ``{"RA1": ["429:1"]}``; it wins
    over ``fault_rate``. ``always_fail``: a prompt containing ``ALWAYS-500`` always gets a 500.
    ``no_logprobs``: answers carry no logprobs. ``latency``: seconds before every successful answer.
    """

    def __init__(self, *, fault_rate: float = 0.0, faults: Sequence[str] = DEFAULT_FAULTS, max_faulty_attempts: int = 1,
                 scripted: Mapping[str, Sequence[str]] | None = None, always_fail: bool = True,
                 no_logprobs: bool = False, hang_seconds: float = 5.0, latency: float = 0.0, seed: str = "",
                 model: str = "fault-judge"):
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.max_faulty_attempts = max_faulty_attempts
        self.scripted = dict(scripted or {})
        self.always_fail = always_fail
        self.no_logprobs = no_logprobs
        self.hang_seconds = hang_seconds
        self.latency = latency
        self.seed = seed
        self.model = model
        self.stats = FaultStats()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()  # open client connections, cut by stop()
        self._connections_lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "the server is not running"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def fault_for(self, prompt: str, attempt: int) -> str | None:
        """The fault injected on ``attempt`` (1-based) of ``prompt``, or None for a normal answer."""
        if self.always_fail and ALWAYS_500_MARKER in prompt:
            return "500"
        for marker, script in self.scripted.items():
            if marker in prompt:
                return script[attempt - 1] if attempt <= len(script) else None
        if _digest(self.seed, "faulty", prompt) % 10_000 >= self.fault_rate * 10_000:
            return None
        faulty_attempts = 1 + _digest(self.seed, "count", prompt) % self.max_faulty_attempts
        if attempt > faulty_attempts:
            return None
        return self.faults[_digest(self.seed, "kind", prompt, attempt) % len(self.faults)]

    def __enter__(self) -> "FaultServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving as a crash would (again: nothing more): open connections are cut, or a kept-alive one would
        go on being answered."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._connections_lock:
            for connection in self._connections:
                _cut(connection)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _opened(self, connection: socket.socket) -> None:
        with self._connections_lock:
            if self._stopping.is_set():  # accepted as the server stopped, after stop() cut the others
                _cut(connection)
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def completion(self, prompt: str, max_tokens: int) -> dict:
        """The OpenAI chat-completion body answering ``prompt``."""
        top = top_logprobs_for(prompt)
        text = top[0][0] if max_tokens <= 1 else text_for(prompt)

        def entry(token: str, logprob: float) -> dict:
            return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

        logprobs = None if self.no_logprobs else {"content": [{**entry(*top[0]), "top_logprobs": [entry(*t) for t in top]}]}
        return {"id": f"chatcmpl-{_digest(prompt):x}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                             "finish_reason": "length" if max_tokens <= 1 else "stop"}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 1,
                          "total_tokens": len(prompt.split()) + 1}}


def _cut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its handler


def _handler_for(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
        timeout = 30  # an idle connection's handler gives up after this

        def setup(self) -> None:
            super().setup()
            server._opened(self.connection)

        def handle(self) -> None:
            try:
                super().handle()
            except OSError:
                if not server._stopping.is_set():
                    raise  # only stop() cuts a connection mid-request

        def finish(self) -> None:
            server._closed(self.connection)
            super().finish()

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send_json(self, status: int, body: dict, headers: Mapping[str, str] | None = None) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v1/models":
                return self._send_json(404, {"error": {"message": "not found", "type": "not_found_error"}})
            with server.stats.lock:
                server.stats.models_requests += 1
            self._send_json(200, {"object": "list", "data": [
                {"id": server.model, "object": "model", "created": 0, "owned_by": "fault-server"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send_json(404, {"error": {"message": "not found", "type": "not_found_error"}})
            prompt = str((body.get("messages") or [{}])[-1].get("content", ""))
            stats = server.stats
            with stats.lock:
                stats.requests[prompt] += 1
                stats.arrivals.setdefault(prompt, []).append(time.monotonic())
                fault = server.fault_for(prompt, stats.requests[prompt])
                if fault is not None:
                    stats.faults[fault] += 1
            if fault in ("hang", "drop"):
                if fault == "hang":
                    server._stopping.wait(server.hang_seconds)
                self.close_connection = True  # the handler returns without writing: the socket just closes
                return
            if fault is not None:
                status, _, retry_after = fault.partition(":")
                return self._send_json(int(status), {"error": {"message": f"injected fault {fault}",
                                                               "type": "server_error", "code": int(status)}},
                                       {"Retry-After": retry_after} if retry_after else {})
            if server.latency:
                server._stopping.wait(server.latency)
            self._send_json(200, server.completion(prompt, int(body.get("max_tokens") or 16)))
            with stats.lock:
                stats.successes[prompt] += 1

    return Handler
