"""The real engines on the real default model: in-process vLLM, the spawned vLLM server (openai client), hf."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from embench.engines import EngineOptions
from embench.engines.vllm_server import VLLMServer, server_command
from tests.conftest import EMBENCH, REPO, read_jsonl, run_embench

PROMPTS = [
    {"id": "capital", "prompt": "What is the capital of Italy?"},
    {"id": "haiku", "prompt": "Write a haiku about autumn leaves."},
    {"id": "advice", "system": "You are a concise assistant.", "prompt": "How can I stay focused while studying?"},
]


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in PROMPTS))
    return path


def launcher_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if "embench.engines.vllm_launcher" in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def assert_n_samples_per_prompt(run_dir: Path, n: int) -> list[dict]:
    rows = read_jsonl(run_dir / "generations.jsonl")
    assert len(rows) == len(PROMPTS) * n
    assert len({row["key"] for row in rows}) == len(rows)
    per_prompt = Counter(row["prompt_id"] for row in rows)
    assert per_prompt == {line["id"]: n for line in PROMPTS}
    for prompt_id in per_prompt:
        indices = sorted(row["sample_index"] for row in rows if row["prompt_id"] == prompt_id)
        assert indices == list(range(n))
    assert all(row["completion"].strip() for row in rows)
    assert all(row["completion_tokens"] > 0 for row in rows)
    return rows


def assert_provenance(run_dir: Path, engine: str) -> dict:
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "complete"
    config = record["config"]
    assert len(config["model"]["base_sha256"]) == 64
    assert len(config["chat_template_sha256"]) == 64
    assert set(config["sampling"]) == {"temperature", "top_p", "max_tokens", "seed"}
    attempt = record["attempts"][-1]
    assert attempt["engine"]["name"] == engine and attempt["engine"]["version"]
    # Both vLLM engines record their parallel settings (here the single-device defaults).
    assert attempt["engine"]["parallel"] == {"tensor": 1, "pipeline": 1, "data": 1}
    assert config["engine"]["options"]["tensor_parallel_size"] == 1
    assert record["embench_version"]
    return record


def test_vllm_in_process_draws_n_distinct_samples_per_prompt(prompts_file, tmp_path):
    out = tmp_path / "run"
    run_embench("generate", "--prompts", str(prompts_file), "-n", "3", "--temperature", "1.0", "--max-tokens", "24",
                "--seed", "11", "--out", str(out), check=True)
    rows = assert_n_samples_per_prompt(out, 3)
    assert_provenance(out, "vllm")
    # Different per-sample seeds at temperature 1 give different samples of the same prompt.
    for prompt_id in {row["prompt_id"] for row in rows}:
        texts = {row["completion"] for row in rows if row["prompt_id"] == prompt_id}
        assert len(texts) >= 2, prompt_id
    # The system prompt of a prompt line reaches the model's conversation.
    advice = next(row for row in rows if row["prompt_id"] == "advice")
    assert advice["messages"][0] == {"role": "system", "content": "You are a concise assistant."}


def test_vllm_server_engine_serves_n_samples_and_leaves_no_process(prompts_file, tmp_path):
    out = tmp_path / "run"
    run_embench("generate", "--prompts", str(prompts_file), "--engine", "vllm-server", "-n", "2",
                "--max-tokens", "24", "--out", str(out), check=True)
    assert_n_samples_per_prompt(out, 2)
    record = assert_provenance(out, "vllm-server")
    assert record["attempts"][-1]["engine"]["base_url"].startswith("http://127.0.0.1:")
    assert launcher_processes() == []


def test_vllm_engines_receive_identical_prompts(prompts_file, tmp_path):
    """The in-process engine and the server get the same chat-template token ids, hence the same keys.

    (Their greedy text may still differ at a near-tie: bf16 numerics depend on how requests are batched.)
    """
    args = ["--prompts", str(prompts_file), "-n", "1", "--temperature", "0", "--max-tokens", "8"]
    run_embench("generate", *args, "--out", str(tmp_path / "a"), check=True)
    run_embench("generate", *args, "--engine", "vllm-server", "--out", str(tmp_path / "b"), check=True)
    a = {row["key"]: row["prompt_tokens"] for row in read_jsonl(tmp_path / "a" / "generations.jsonl")}
    b = {row["key"]: row["prompt_tokens"] for row in read_jsonl(tmp_path / "b" / "generations.jsonl")}
    assert a == b


def test_openai_engine_against_a_real_vllm_server(default_model, prompts_file, tmp_path):
    server = VLLMServer(default_model, EngineOptions())
    try:
        out = tmp_path / "run"
        run_embench("generate", "--engine", "openai", "--model", "embench-model", "--base-url", server.base_url,
                    "--prompts", str(prompts_file), "-n", "2", "--max-tokens", "24", "--concurrency", "3",
                    "--out", str(out), check=True)
        assert_n_samples_per_prompt(out, 2)
        config = json.loads((out / "run.json").read_text())["config"]
        assert config["model"]["endpoint"] == server.base_url
        assert config["chat_template_sha256"] is None  # the endpoint renders the template: recorded as unknown
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_lora_greedy_output_is_identical_in_vllm_and_hf(lora_adapter, prompts_file, tmp_path):
    """Both engines in float32: in bfloat16, vLLM's greedy path can part from fp32 hf at a near-tie (a haiku did,
    on one of these machines), which would say nothing about how each applies the adapter."""
    args = ["--prompts", str(prompts_file), "-n", "1", "--temperature", "0", "--max-tokens", "32", "--dtype", "float32"]
    run_embench("generate", "--model", str(lora_adapter), *args, "--out", str(tmp_path / "vllm"), check=True)
    run_embench("generate", "--model", str(lora_adapter), "--engine", "hf", *args, "--out", str(tmp_path / "hf"),
                check=True)
    run_embench("generate", "--model", "default", *args, "--out", str(tmp_path / "base"), check=True)

    def completions(name: str) -> dict[str, str]:
        return {row["prompt_id"]: row["completion"] for row in read_jsonl(tmp_path / name / "generations.jsonl")}

    assert completions("vllm") == completions("hf")
    assert completions("vllm") != completions("base"), "the adapter must change the output for this test to mean anything"
    config = json.loads((tmp_path / "vllm" / "run.json").read_text())["config"]["model"]
    assert len(config["adapter_sha256"]) == 64 and config["adapter_rank"] == 8


def test_interrupting_a_server_run_stops_the_server(prompts_file, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([*EMBENCH, "generate", "--prompts", str(prompts_file), "--engine", "vllm-server",
                                "-n", "40", "--max-tokens", "200", "--out", str(out)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    generations = out / "generations.jsonl"
    while time.monotonic() < deadline and not (generations.exists() and generations.stat().st_size > 0):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.2)
    assert launcher_processes(), "the server should be running mid-generation"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    assert "interrupted" in process.stderr.read()
    assert launcher_processes() == []
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted"


def test_many_seeded_prompts_at_once(tmp_path):
    """More prompt tokens than one scheduler step holds, every request seeded: vLLM on CPU must not split a
    prompt across steps (its CPU generators cannot rewind; this crashed before chunked prefill was turned off)."""
    prompts = tmp_path / "many.jsonl"
    lines = [{"id": f"q{i}", "prompt": f"Question {i}: describe, in a few careful sentences, a quiet morning in a small "
              f"harbour town, the boats, the gulls and the smell of the sea, number {i}."} for i in range(120)]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "run"
    run_embench("generate", "--prompts", str(prompts), "-n", "1", "--temperature", "1.0", "--max-tokens", "4",
                "--out", str(out), check=True)
    assert len(read_jsonl(out / "generations.jsonl")) == 120


def test_the_server_command_line_carries_parallel_flags_only_when_set(default_model):
    """vLLM's own `serve` parser (the one the launcher runs) reads the flags; nothing is started."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))

    plain = server_command(default_model, EngineOptions(), 8000)
    assert not [arg for arg in plain if "parallel" in arg]
    parsed = parser.parse_args(plain[3:])
    assert (parsed.tensor_parallel_size, parsed.pipeline_parallel_size, parsed.data_parallel_size) == (1, 1, 1)

    options = EngineOptions(tensor_parallel_size=2, pipeline_parallel_size=3, data_parallel_size=4)
    assert options.parallel_gpus == 24
    command = server_command(default_model, options, 8000)
    flags = {flag: command[command.index(flag) + 1] for flag in
             ("--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size")}
    assert flags == {"--tensor-parallel-size": "2", "--pipeline-parallel-size": "3", "--data-parallel-size": "4"}
    rest = [arg for index, arg in enumerate(command) if arg not in flags and command[index - 1] not in flags]
    assert rest == plain  # nothing else changes
    parsed = parser.parse_args(command[3:])
    assert parsed.model_tag == str(default_model.base_path)
    assert (parsed.tensor_parallel_size, parsed.pipeline_parallel_size, parsed.data_parallel_size) == (2, 3, 4)
