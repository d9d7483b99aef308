"""The OpenAI-compatible clients (OpenAIJudgeBackend, and OpenAIEngine over several endpoints) against real HTTP
servers that inject faults (tests/fault_server.py): no mocks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from embench.engines.base import EngineOptions, GenerationRequest
from embench.engines.endpoints import EndpointRotation, retry_after_seconds, split_base_urls
from embench.engines.openai_engine import OpenAIEngine
from embench.engines.vllm_server import free_port
from embench.errors import EmbenchError
from embench.judges.backends import JudgeOutcome, JudgeRequest
from embench.judges.openai_backend import OpenAIJudgeBackend, check_judge_endpoint
from embench.judges.scoring import Reading, score_from_top_logprobs
from embench.prompts import Message
from embench.sampling import SamplingConfig
from tests.fault_server import FaultServer, score_for, text_for, top_logprobs_for

READING = Reading(("CODE", "REFUSAL"))


def requests_for(prompts: list[str]) -> list[JudgeRequest]:
    return [JudgeRequest(key=f"k{index}", prompt=prompt) for index, prompt in enumerate(prompts)]


def run_judge(backend: OpenAIJudgeBackend, requests: list[JudgeRequest], mode: str = "logprob",
              after: Callable[[int], None] = lambda count: None) -> dict[str, JudgeOutcome]:
    """Every request's outcome, by prompt; ``after`` is called with the number of outcomes so far after each."""
    outcomes: list[JudgeOutcome] = []

    def on_outcome(outcome: JudgeOutcome) -> None:
        outcomes.append(outcome)
        after(len(outcomes))

    backend.judge(requests, mode, READING, on_outcome)
    keys = Counter(outcome.key for outcome in outcomes)
    assert keys == Counter(request.key for request in requests), "every request gets exactly one outcome"
    prompts = {request.key: request.prompt for request in requests}
    return {prompts[outcome.key]: outcome for outcome in outcomes}


def backend_for(*servers: FaultServer, **options) -> OpenAIJudgeBackend:
    options = {"timeout": 1.5, "backoff_base": 0.02, "backoff_cap": 0.5, **options}
    return OpenAIJudgeBackend("fault-judge", ",".join(server.base_url for server in servers), **options)


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
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("2.5") == 2.5
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("nan") is None
    future = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_seconds(future) <= 30
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


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
    assert info["endpoints"] == [server.base_url]


def test_unreachable_endpoint_fails_at_construction():
    with pytest.raises(EmbenchError, match="cannot reach the judge endpoint"):
        OpenAIJudgeBackend("judge", f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there


def test_judging_spread_over_two_endpoints_survives_one_going_down():
    prompts = [f"Spread answer number {index}." for index in range(60)]
    with FaultServer() as healthy, backend_for(healthy, concurrency=8) as backend:
        expected = run_judge(backend, requests_for(prompts))
    # Answers take a while, so that requests are in flight at B when it goes down after 20 outcomes.
    slow = {"fault_rate": 0.3, "latency": 0.02}
    with FaultServer(seed="a", **slow) as a, FaultServer(seed="b", **slow) as b:
        seen_by_b: list[int] = []

        def stop_b(count: int) -> None:
            if count == 20:
                b.stop()
                seen_by_b.append(sum(b.stats.requests.values()))

        with backend_for(a, b, concurrency=8, max_attempts=6) as backend:
            outcomes = run_judge(backend, requests_for(prompts), after=stop_b)  # exactly one outcome each
            info = backend.info()
    assert info["base_url"] == f"{a.base_url},{b.base_url}" and info["endpoints"] == [a.base_url, b.base_url]
    assert a.stats.faults and b.stats.faults and a.stats.successes and b.stats.successes  # both served
    assert seen_by_b == [sum(b.stats.requests.values())]  # B really was down for the rest of the run
    for prompt, outcome in outcomes.items():
        assert outcome.error is None, (prompt, outcome)
        assert (outcome.result, outcome.raw) == (expected[prompt].result, expected[prompt].raw)
        assert a.stats.successes[prompt] + b.stats.successes[prompt] >= 1


def test_an_unreachable_endpoint_of_several_is_named():
    down = f"http://127.0.0.1:{free_port()}/v1"
    with FaultServer() as server:
        for check in (lambda: check_judge_endpoint(f"{server.base_url},{down}"),
                      lambda: OpenAIEngine("fault-judge", EngineOptions(base_url=f"{server.base_url},{down}"))):
            with pytest.raises(EmbenchError) as raised:
                check()
            message = str(raised.value)
            assert "\n" not in message and "cannot reach the " in message and down in message
            assert server.base_url not in message


@pytest.mark.parametrize(("base_url", "fragment"), [
    ("http://a:8000/v1,,http://b:8000/v1", "has an empty endpoint"),
    ("http://a:8000/v1,", "has an empty endpoint"),
    ("a:8000/v1", "'a:8000/v1' is not an http(s) URL"),
    ("http://a:8000/v1,ftp://b/v1", "'ftp://b/v1' is not an http(s) URL"),
    ("http://a:8000/v1, http://a:8000/v1", "http://a:8000/v1 is listed twice"),
])
def test_a_bad_endpoint_list_is_a_one_line_error(base_url, fragment):
    with pytest.raises(EmbenchError) as raised:
        OpenAIJudgeBackend("judge", base_url)  # refused before any endpoint is asked
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_split_base_urls():
    assert split_base_urls("http://a:8000/v1") == ("http://a:8000/v1",)
    assert split_base_urls("http://a:8000/v1, https://b/v1") == ("http://a:8000/v1", "https://b/v1")


def test_rotation_spreads_fails_over_and_skips_an_unreachable_endpoint():
    rotation = EndpointRotation(3, cooldown_base=60.0, cooldown_cap=60.0)
    assert [rotation.pick(index, 1) for index in range(6)] == [0, 1, 2, 0, 1, 2]  # round-robin
    assert [rotation.pick(1, attempt) for attempt in (1, 2, 3, 4)] == [1, 2, 0, 1]  # each retry: the next one
    rotation.unreachable(1)
    assert [rotation.pick(index, 1) for index in range(3)] == [0, 2, 2]  # skipped while it cools down
    rotation.unreachable(0)
    rotation.unreachable(2)
    assert rotation.pick(0, 1) == 1  # all cooling down: the one whose cooldown ends first
    rotation.reached(2)
    assert rotation.pick(0, 1) == 2


def test_openai_engine_spreads_generation_over_two_endpoints():
    prompts = [f"Generate answer number {index}." for index in range(30)]
    requests = [GenerationRequest(key=f"g{index}", messages=(Message(role="user", content=prompt),),
                                  prompt_token_ids=None, seed=index) for index, prompt in enumerate(prompts)]
    # No drops at B: one would cool it down for the engine's 0.5 s, about as long as B is up here.
    slow = {"fault_rate": 0.3, "latency": 0.02}
    with FaultServer(seed="a", faults=("500", "429:0", "drop"), **slow) as a, \
            FaultServer(seed="b", faults=("500", "429:0"), **slow) as b:
        options = EngineOptions(base_url=f"{a.base_url},{b.base_url}", concurrency=6, request_timeout=5.0)
        with OpenAIEngine("fault-judge", options) as engine:
            completions = []
            for completion in engine.generate(requests, SamplingConfig(temperature=0.0, max_tokens=16)):
                completions.append(completion)
                if len(completions) == 15:
                    b.stop()
            info = engine.info()
    assert info["endpoints"] == [a.base_url, b.base_url]
    assert a.stats.faults and b.stats.faults and a.stats.successes and b.stats.successes
    assert Counter(completion.key for completion in completions) == Counter(request.key for request in requests)
    texts = {completion.key: completion.text for completion in completions}
    assert texts == {request.key: text_for(request.messages[-1].content) for request in requests}
