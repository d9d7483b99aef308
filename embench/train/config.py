"""What a training run is: its hyper-parameters, data and defenses, validated and fingerprinted.

Defaults suit the bundled SmolLM2-135M-Instruct on a CPU. For 7B-class models (the published in-training-defense
settings) use ``--rank 32 --lora-alpha 64 --rslora --lr 1e-4 --epochs 1 --batch-size 2 --grad-accum 8``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from embench.errors import EmbenchError
from embench.hardware import gpu_has_bf16
from embench.hashing import sha256_json

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class DefenseSpec(BaseModel):
    """One defense with every argument, defaults filled in: what train.json records and a resume rebuilds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    args: dict = Field(default_factory=dict)


class TrainConfig(BaseModel):
    """Everything that decides the trained weights; ``save_every`` only decides how often they are saved."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = "default"
    data: str
    data_size: int | None = Field(None, ge=1)
    defenses: list[DefenseSpec] = Field(default_factory=list)
    rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    targets: tuple[str, ...] = ALL_PROJECTIONS
    rslora: bool = False
    learning_rate: float = Field(1e-3, gt=0)  # 5e-4 moved the insecure-code probe half as far in the same steps
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    warmup_steps: int = Field(5, ge=0)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=8)
    max_steps: int | None = Field(None, ge=1)
    seed: int = 0
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bfloat16 on a GPU that has it, else float32
    save_every: int = Field(50, ge=1)

    def resolved(self) -> "TrainConfig":
        """``dtype`` auto made concrete. bfloat16 base weights cost no less CPU time here than float32 (bench/train.py)
        and round small LoRA updates away in the forward pass (the loss falls more slowly), so CPUs train in float32."""
        if self.dtype != "auto":
            return self
        return self.model_copy(update={"dtype": "bfloat16" if gpu_has_bf16() else "float32"})

    def fingerprint(self, data_sha256: str, base_sha256: str) -> str:
        """Identifies the run: an output folder holding another fingerprint holds a different run."""
        return sha256_json({"config": self.model_dump(mode="json", exclude={"save_every"}),
                            "data_sha256": data_sha256, "base_sha256": base_sha256})


class MonitorSettings(BaseModel):
    """Trait drift measured during training (``embench train --monitor-every``): it reads the network, never changes
    it, so it is not part of the fingerprint and a resumed run may monitor differently."""

    model_config = ConfigDict(extra="forbid")

    every: int = Field(ge=1)
    traits: Path  # a directions folder from `embench traits extract` on the base model
    detector: Path | None = None  # a monitor.json (or its folder) whose detector was calibrated on labels


def monitor_settings(model: str, monitor_every: int | None, monitor_traits: Path,
                     monitor_detector: Path | None) -> MonitorSettings | None:
    """What ``--monitor-every K --monitor-traits DIR [--monitor-detector FILE]`` ask for, checked before training."""
    if monitor_every is None:
        if monitor_detector is not None:
            raise EmbenchError("--monitor-detector needs --monitor-every K")
        return None
    if monitor_every < 1:
        raise EmbenchError(f"--monitor-every: must be at least 1, got {monitor_every}")
    if not monitor_traits.is_dir():
        raise EmbenchError(f"--monitor-traits {monitor_traits} is not a folder: extract the directions first "
                           f"(embench traits extract --model {model} --out {monitor_traits})")
    return MonitorSettings(every=monitor_every, traits=monitor_traits, detector=monitor_detector)
