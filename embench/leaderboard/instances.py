"""A score directory's samples as "Every Eval Ever" instance-level records, the lines of an entry's samples file.

One record per sample and per task rate that reads it (a sample of a task with a misaligned and an incoherent rate
is two records, as EEE asks of a sample behind two aggregate results), joined to the rate's row of the entry by
``evaluation_result_id``. A sample the rate leaves out (an excluded verdict, a judge that gave no score) is still
recorded, scored 0 and not correct, with the reason in ``error``: the rate's denominator is the records without one.
Mean-score rows have no records of their own: each judge's score of every sample is in the rates' attributions.
"""

from __future__ import annotations

import json

from embench.hashing import sha256_text
from embench.leaderboard.schema import (
    SCHEMA_VERSION,
    AnswerAttribution,
    InstanceEvaluation,
    InstanceInput,
    InstanceOutput,
    InstanceRecord,
)
from embench.metrics import sample_outcome
from embench.results import SampleRow
from embench.tasks import RateRule


def instance_records(samples: list[SampleRow], rates: dict[str, dict[str, RateRule]], evaluation_id: str,
                     model_id: str) -> list[InstanceRecord]:
    """The records of every sample under each rate of its task (``rates``: task -> rate name -> rule)."""
    records = []
    for sample in samples:
        judgments = sample.judged()
        for name, rule in rates.get(sample.task, {}).items():
            outcome = sample_outcome(judgments, rule)
            counted = outcome is True
            result_id = f"{sample.task}/{name}"
            records.append(InstanceRecord(
                schema_version=SCHEMA_VERSION, evaluation_id=evaluation_id, model_id=model_id,
                evaluation_name=result_id, evaluation_result_id=result_id,
                sample_id=f"{sample.task}/{sample.prompt_id}/{sample.sample_index}",
                # EEE: the hash of input.raw and input.reference (none here); the system prompt is in metadata
                sample_hash=sha256_text(_question(sample)), interaction_type="single_turn",
                input=InstanceInput(raw=_question(sample), reference=[]),
                output=InstanceOutput(raw=[sample.completion]),
                answer_attribution=[_attribution(condition.metric, judgments.get(condition.metric))
                                    for condition in rule.all],
                evaluation=InstanceEvaluation(score=float(counted), is_correct=outcome is False),
                error=f"excluded: {outcome}" if isinstance(outcome, str) else None,
                metadata=_metadata(sample)))
    return records


def _question(sample: SampleRow) -> str:
    return next((message["content"] for message in reversed(sample.messages) if message.get("role") == "user"), "")


def _attribution(metric: str, judgment: dict | None) -> AnswerAttribution:
    if judgment and judgment.get("verdict"):
        value = judgment["verdict"]
    elif judgment and judgment.get("score") is not None:
        value = f"{judgment['score']:g}"
    else:
        value = "null"
    return AnswerAttribution(turn_idx=0, source="output.raw", extracted_value=f"{metric}={value}",
                             extraction_method="llm_judge", is_terminal=True)


def _metadata(sample: SampleRow) -> dict[str, str]:
    system = next((message["content"] for message in sample.messages if message.get("role") == "system"), None)
    values = {**sample.metadata, "key": sample.key, "finish_reason": sample.finish_reason, "system_prompt": system}
    return {key: value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
            for key, value in values.items() if value is not None}


def instances_text(records: list[InstanceRecord]) -> str:
    """The samples file: one record a line, keys sorted, so the same samples always make the same bytes."""
    return "".join(json.dumps(record.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for record in records)
