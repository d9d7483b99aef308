"""OpenAIJudgeBackend against a real HTTP server that injects faults (tests/fault_server.py): no mocks."""

from __future__ import annotations

import socket
from collections import Counter
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from embench.errors import EmbenchError
from embench.judges.backends import JudgeOutcome, JudgeRequest
from embench.judges.openai_backend import OpenAIJudgeBackend, _retry_after_seconds
from embench.judges.scoring import Reading, score_from_top_logprobs
from tests.fault_server import FaultServer, score_for, top_logprobs_for

READING = Reading(("CODE", "REFUSAL"))


def requests_for(prompts: list[str]) -> list[JudgeRequest]:
    return [JudgeRequest(key=f"k{index}", prompt=prompt) for index, prompt in enumerate(prompts)]


def run_judge(backend: OpenAIJudgeBackend, requests: list[JudgeRequest], mode: str = "logprob") -> dict[str, JudgeOutcome]:
    outcomes: list[JudgeOutcome] = []
    backend.judge(requests, mode, READING, outcomes.append)
    keys = Counter(outcome.key for outcome in outcomes)
    assert keys == Counter(request.key for request in requests), "every request gets exactly one outcome"
    prompts = {request.key: request.prompt for request in requests}
    return {prompts[outcome.key]: outcome for outcome in outcomes}


def backend_for(server: FaultServer, **options) -> OpenAIJudgeBackend:
    options = {"timeout": 1.5, "backoff_base": 0.02, "backoff_cap": 0.5, **options}
    return OpenAIJudgeBackend("fault-judge", server.base_url, **options)


def test_faults_are_retried_until_every_request_succeeds_once():
    prompts = [f"Rate answer number {index}." for index in range(59)] + ["REFUSAL-CASE: rate this."]
    with FaultServer(fault_rate=0.3, max_faulty_attempts=2, hang_seconds=5.0) as server:
        faulty_first = sum(server.fault_for(prompt, 1) is not None for prompt in prompts)
        assert 10 <= faulty_first <= 30  # about 30% of first attempts fault
        with backend_for(server, concurrency=8, max_attempts=6) as backend:
            outcomes = run_judge(backend, requests_for(prompts))
        stats = server.stats
        assert set(stats.faults) == {"429:0", "500", "hang", "drop"}, stats.faults
        assert stats.retried > 0
        for prompt, outcome in outcomes.items():
            assert outcome.error is None and outcome.result is not None, (prompt, outcome)
            assert outcome.result == score_from_top_logprobs(top_logprobs_for(prompt), READING)
            assert outcome.raw == {"top_logprobs": [list(pair) for pair in top_logprobs_for(prompt)]}
            assert outcome.attempts == stats.requests[prompt]  # every attempt reached the server
            assert stats.successes[prompt] == 1  # answered once: no duplicate judgments
        assert outcomes[prompts[-1]].result.verdict == "REFUSAL"
        assert sum(outcome.attempts > 1 for outcome in outcomes.values()) == faulty_first


def test_retry_after_is_honoured_and_capped():
    scripted = {"RA-ONE": ["429:1"], "RA-HOUR": ["503:3600"]}
    with FaultServer(scripted=scripted) as server:
        with backend_for(server, concurrency=4, backoff_base=0.001, backoff_cap=2.0) as backend:
            outcomes = run_judge(backend, requests_for(["RA-ONE rate", "RA-HOUR rate", "plain rate"]))
        arrivals = server.stats.arrivals
    assert [outcomes[p].attempts for p in ("RA-ONE rate", "RA-HOUR rate", "plain rate")] == [2, 2, 1]
    assert all(outcome.result is not None for outcome in outcomes.values())
    # jitter alone would wait at most 1 ms: the gaps are the Retry-After (1 s) and the cap (2 s, not an hour)
    assert arrivals["RA-ONE rate"][1] - arrivals["RA-ONE rate"][0] >= 1.0
    assert 2.0 <= arrivals["RA-HOUR rate"][1] - arrivals["RA-HOUR rate"][0] < 30


def test_retry_after_header_forms():
    assert _retry_after_seconds(None) is None
    assert _retry_after_seconds("2.5") == 2.5
    assert _retry_after_seconds("-3") == 0.0
    assert _retry_after_seconds("soon") is None
    assert _retry_after_seconds("nan") is None
    future = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= _retry_after_seconds(future) <= 30
    assert _retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_a_request_that_keeps_failing_ends_as_an_error_outcome():
    prompts = ["ALWAYS-500 rate this", "BAD-REQUEST rate this"] + [f"fine {index}" for index in range(6)]
    with FaultServer(scripted={"BAD-REQUEST": ["400"]}) as server:
        with backend_for(server, concurrency=3, max_attempts=3) as backend:
            outcomes = run_judge(backend, requests_for(prompts))
        requests_seen = server.stats.requests
    always = outcomes["ALWAYS-500 rate this"]
    assert always.result is None and always.attempts == 3 and requests_seen["ALWAYS-500 rate this"] == 3
    assert always.error.startswith("InternalServerError: ")
    bad = outcomes["BAD-REQUEST rate this"]  # a 4xx other than 408/409/429 is not retried
    assert bad.result is None and bad.attempts == 1 and bad.error.startswith("BadRequestError: ")
    for prompt in prompts[2:]:
        assert outcomes[prompt].result.score is not None and outcomes[prompt].attempts == 1


def test_logprob_mode_without_logprobs_is_a_user_error():
    with FaultServer(no_logprobs=True) as server:
        with backend_for(server) as backend, pytest.raises(EmbenchError, match="sampled"):
            backend.judge(requests_for(["rate this"]), "logprob", READING, lambda outcome: None)


def test_sampled_mode_reads_the_text_answer():
    prompts = [f"sampled {index}" for index in range(5)] + ["REFUSAL-CASE sampled"]
    with FaultServer(no_logprobs=True, fault_rate=0.5, faults=("500", "drop")) as server:
        with backend_for(server, concurrency=4) as backend:
            outcomes = run_judge(backend, requests_for(prompts), mode="sampled")
    for prompt in prompts[:-1]:
        assert outcomes[prompt].result.score == score_for(prompt)
        assert outcomes[prompt].raw == {"text": f"{score_for(prompt)}\n"}
    refusal = outcomes["REFUSAL-CASE sampled"].result
    assert refusal.verdict == "REFUSAL" and refusal.score is None


def test_exact_mode_needs_a_local_judge_and_info():
    with FaultServer() as server:
        backend = backend_for(server, concurrency=5)
        with pytest.raises(EmbenchError, match="--judge-engine vllm or hf"):
            backend.judge(requests_for(["x"]), "exact", READING, lambda outcome: None)
        info = backend.info()
    assert info["backend"] == "openai" and info["judge_model"] == "fault-judge"
    assert info["base_url"] == server.base_url and info["concurrency"] == 5 and info["openai"]


def test_unreachable_endpoint_fails_at_construction():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    with pytest.raises(EmbenchError, match="cannot reach the judge endpoint"):
        OpenAIJudgeBackend("judge", f"http://127.0.0.1:{port}/v1")
