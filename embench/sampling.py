"""Sampling parameters: every one is explicit and recorded; none is inherited from a model's generation_config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SamplingConfig(BaseModel):
    """How each sample is drawn. ``seed`` is the run seed; each sample gets its own seed derived from its key."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    # The published eval.py asks for at least one token, so an answer is never empty. Left out of the dump at 0 so
    # that sample keys made before it existed stay the same.
    min_tokens: int = Field(0, ge=0, exclude_if=lambda value: value == 0)
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
