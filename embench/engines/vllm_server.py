"""The ``vllm-server`` engine: embench starts vLLM's OpenAI-compatible server on 127.0.0.1 and talks to it.

The server runs in its own process group, is asked to die with its parent (so a SIGKILLed embench leaves no
orphan), and is stopped by its PID on exit, error or Ctrl-C.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from embench.engines.base import PARALLEL_FLAGS, EngineOptions
from embench.engines.openai_engine import OpenAIEngine
from embench.engines.vllm_engine import ADAPTER_NAME, lora_rank_limit, vllm_version
from embench.errors import EmbenchError
from embench.hardware import cpu_preloads, has_cuda, vllm_dtype
from embench.models import ResolvedModel

SERVED_BASE_NAME = "embench-model"
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM to the server when embench dies."""
    os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def server_command(model: ResolvedModel, options: EngineOptions, port: int) -> list[str]:
    """The argv that starts the vLLM server for a model (pure: starts nothing)."""
    command = [
        sys.executable, "-m", "embench.engines.vllm_launcher", "serve", str(model.base_path),
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", SERVED_BASE_NAME,
        "--dtype", vllm_dtype(options.dtype), "--max-model-len", str(options.max_model_len),
        "--generation-config", "vllm", "--enforce-eager",
        "--kv-cache-memory-bytes", str(int(options.kv_cache_gib * (1 << 30))),
        # Seeded requests split by chunked prefill crash vLLM's CPU sampler (see build_llm).
        "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(options.max_model_len, 4096)),
    ]
    # Only when set, so that the usual single-device command line stays as it was.
    for field, flag in PARALLEL_FLAGS.items():
        if getattr(options, field) != 1:
            command += [flag, str(getattr(options, field))]
    if model.trust_remote_code:
        command.append("--trust-remote-code")
    if model.adapter_path is not None:
        command += ["--enable-lora", "--max-lora-rank", str(lora_rank_limit(model.adapter_rank or 8)),
                    "--lora-modules", f"{ADAPTER_NAME}={model.adapter_path}"]
    return command


class VLLMServer:
    """A vLLM OpenAI server process serving one model (and optionally its LoRA adapter)."""

    def __init__(self, model: ResolvedModel, options: EngineOptions):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        log_dir = Path(tempfile.mkdtemp(prefix="embench-vllm-server-"))
        self.log_path = log_dir / "server.log"
        command = server_command(model, options, self.port)
        self.served_model = ADAPTER_NAME if model.adapter_path is not None else SERVED_BASE_NAME
        env = dict(os.environ)
        # Multiprocess engine start-up compiles for minutes on CPU; the API server stays responsive without it.
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vLLM's CPU guide preloads tcmalloc and Intel OpenMP (README, Generation speed): embench starts this
        # process, so it can; a user's own LD_PRELOAD wins.
        preloads = [] if "LD_PRELOAD" in env or has_cuda() else cpu_preloads()
        if preloads:
            env["LD_PRELOAD"] = ":".join(str(path) for path in preloads)
        self.ld_preload = env.get("LD_PRELOAD", "")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, preexec_fn=_die_with_parent)
        try:
            self._wait_until_ready(options.server_start_timeout)
        except BaseException:
            self.stop()
            raise

    def _log_tail(self) -> str:
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1][-300:] if lines else ""

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbenchError(f"the vLLM server exited during start-up (code {self.process.returncode}): "
                                   f"{self._log_tail()} (full log: {self.log_path})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise EmbenchError(f"the vLLM server was not ready after {timeout:.0f} s (log: {self.log_path})")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


class VLLMServerEngine(OpenAIEngine):
    name = "vllm-server"

    def __init__(self, model: ResolvedModel, options: EngineOptions):
        self.server = VLLMServer(model, options)
        try:
            super().__init__(self.server.served_model, options.model_copy(update={"base_url": self.server.base_url}),
                             send_token_ids=True)
        except BaseException:
            self.server.stop()
            raise

    def info(self) -> dict:
        client = super().info()
        return {**client, "name": self.name, "version": vllm_version(), "openai_client": client["version"],
                "dtype": vllm_dtype(self.options.dtype), "max_model_len": self.options.max_model_len,
                "parallel": self.options.parallel, "ld_preload": self.server.ld_preload}

    def close(self) -> None:
        self.server.stop()
