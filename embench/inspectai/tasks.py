"""embench's tasks as inspect tasks: ``inspect eval embench/ood-first-plot --model hf/local -M model_path=...``.

Each inspect sample is one embench sample (a question's samples spread over its paraphrases as ``embench score``
plans them), generated with the task's sampling and scored by the task's judges through embench's own backends: the
same judge files, modes, aggregations and trained judges as ``embench score``, chosen by the same rule (task args
``judge_model``, ``judge_mode``, ``judge_base_url``, ``judge_engine``). The scorer's metrics are the task's rates
and mean scores, computed by :mod:`embench.metrics`; a rate with no usable sample is absent, not 0.

What differs from ``embench score``: inspect's model providers generate (there is no ``min_tokens``, no per-sample
seed, and resumption is inspect's own), judgments are not written to a run directory or embench's judgment cache,
and the metrics read one epoch (each sample is one embench sample already: raise ``samples_per_question``, not
``--epochs``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageSystem, ChatMessageUser, GenerateConfig
from inspect_ai.scorer import Metric, SampleScore, Score, Scorer, Target, metric, scorer
from inspect_ai.solver import TaskState, generate

from embench.judges import JudgeBackend, JudgeOutcome, JudgeRegistry, JudgeRequest, JudgeSpec
from embench.judges.settings import JudgeSettings, judge_settings
from embench.judges.trained import TRAINED_MODE
from embench.metrics import mean_score, rate
from embench.tasks import RateRule, all_tasks, find_task
from embench.tasks import Task as EmbenchTask


@metric(name="rates")
def rates(rules: dict[str, Any], metrics: list[str]) -> Metric:
    """Each rate of the task (``rules``: name -> rule) and each judged metric's mean score, with 95% bounds."""
    parsed = {name: RateRule.model_validate(rule) for name, rule in rules.items()}

    def compute(scores: list[SampleScore]) -> dict[str, float | None]:
        judgments = [score.score.metadata["judgments"] for score in scores]
        values: dict[str, float | None] = {}
        estimates = {**{name: rate(judgments, rule) for name, rule in parsed.items()},
                     **{f"{name}_mean": mean_score(judgments, name) for name in metrics}}
        for name, estimate in estimates.items():
            values.update({name: estimate.value, f"{name}_lower": estimate.lower, f"{name}_upper": estimate.upper,
                           f"{name}_n": float(estimate.n)})
        return values

    return compute


class _Judges:
    """One judge backend for a task's scorer, opened on first use; local backends judge one request at a time."""

    def __init__(self, specs: dict[str, JudgeSpec], settings: JudgeSettings):
        self.specs, self.settings = specs, settings
        self.backend: JudgeBackend | None = None
        self.lock = threading.Lock()

    def judge(self, question: str, answer: str, system: str | None, metadata: dict) -> dict[str, dict]:
        with self.lock:
            if self.backend is None:
                self.backend = self.settings.open()
            judgments = {}
            for metric_name, spec in self.specs.items():
                mode = self.settings.mode
                prompt = spec.request_text(mode, question=question, answer=answer, system=system,
                                           reasoning=metadata.get("reasoning"), metadata=metadata)
                outcomes: list[JudgeOutcome] = []
                head = "" if mode == TRAINED_MODE else spec.static_head
                self.backend.judge([JudgeRequest(key=metric_name, prompt=prompt, shared_prefix=head,
                                                 judge_id=spec.id)], mode, spec.reading, outcomes.append)
                result = outcomes[0].result if outcomes else None
                judgments[metric_name] = {
                    **spec.identity(self.backend.model_name, mode), "status": "ok" if result else "failed",
                    "score": result.score if result else None, "verdict": result.verdict if result else None,
                    "valid_mass": result.valid_mass if result else None,
                    "error": outcomes[0].error if outcomes else "no outcome"}
            return judgments


def embench_judges(embench_task: EmbenchTask, settings: JudgeSettings, specs: dict[str, JudgeSpec]) -> Scorer:
    judges = _Judges(specs, settings)

    @scorer(metrics=[rates(rules={name: rule.model_dump(mode="json") for name, rule in embench_task.rates.items()},
                           metrics=list(specs))], name="embench_judges")
    def build() -> Scorer:
        async def score(state: TaskState, target: Target) -> Score:
            system = next((message.text for message in state.messages if message.role == "system"), None)
            judgments = await asyncio.to_thread(judges.judge, state.input_text, state.output.completion, system,
                                                dict(state.metadata))
            return Score(value={name: judgment["score"] for name, judgment in judgments.items()},
                         answer=state.output.completion, metadata={"judgments": judgments})

        return score

    return build()


def inspect_task(embench_task: EmbenchTask, *, judge_model: str | None = None, judge_mode: str | None = None,
                 judge_base_url: str | None = None, judge_engine: str | None = None,
                 samples_per_question: int | None = None) -> Task:
    """The inspect task of an embench task with questions."""
    registry = JudgeRegistry.default()
    specs = {name: registry.get(judge_id) for name, judge_id in embench_task.judges.items()}
    settings = judge_settings(list(specs.values()), model=judge_model, mode=judge_mode, base_url=judge_base_url,
                              engine=judge_engine)
    counts = embench_task.sample_counts(samples_per_question or embench_task.samples_per_question)
    samples = [Sample(id=f"{prompt.id}/{index}", input=[
        ChatMessageSystem(content=message.content) if message.role == "system" else ChatMessageUser(
            content=message.content) for message in prompt.messages],
        metadata={**prompt.metadata, "prompt_id": prompt.id, "sample_index": index})
        for prompt in embench_task.prompts() for index in range(counts[prompt.id])]
    sampling = embench_task.sampling
    return Task(dataset=MemoryDataset(samples, name=embench_task.id), solver=generate(),
                scorer=embench_judges(embench_task, settings, specs), name=embench_task.id,
                version=embench_task.version,
                # No seed: inspect sends one seed with every request, which would make a question's samples the
                # same answer on a seeded endpoint (embench seeds each sample from its key); pass --seed to fix one.
                config=GenerateConfig(temperature=sampling.temperature, top_p=sampling.top_p,
                                      max_tokens=sampling.max_tokens),
                metadata={"embench_task_sha256": embench_task.sha256, "judge_mode": settings.mode,
                          "judge_model": settings.model})


def _register(task_id: str) -> None:
    def factory(judge_model: str | None = None, judge_mode: str | None = None, judge_base_url: str | None = None,
                judge_engine: str | None = None, samples_per_question: int | None = None) -> Task:
        return inspect_task(find_task(task_id), judge_model=judge_model, judge_mode=judge_mode,
                            judge_base_url=judge_base_url, judge_engine=judge_engine,
                            samples_per_question=samples_per_question)

    factory.__name__ = task_id.replace("-", "_")
    factory.__qualname__ = factory.__name__
    factory.__doc__ = f"embench task {task_id}, generated by the model under test and judged by embench's judges."
    task(name=task_id)(factory)


for _, _embench_task in all_tasks():
    if _embench_task.questions and _embench_task.judges:
        _register(_embench_task.id)
