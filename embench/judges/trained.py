"""Trained judges: a small trained head on a frozen base model's hidden states, stored as a folder.

A trained judge folder holds
- ``judge.json`` (``TrainedJudgeManifest``): the base model by hash, how features are read, the outputs (one per
  judge id it can serve, with the verdicts it can give), the weights' sha256, the training data's hash and the
  held-out metrics of the training run;
- ``weights.safetensors``: per output a score head (and a verdict head where it gives verdicts), and the feature
  standardisation. Safetensors only: a folder holding pickle weights is refused.

A judgment is one forward pass of the base model over the chat-formatted question and answer (no judge prompt):
the features are the mean of the hidden states over the answer's tokens (and, if configured, the hidden state of its
last token) at a few layers. Every output reads the same features, so judging ``aligned`` and ``coherent`` of one answer costs one
pass. Each answer is computed alone (batch of one, no padding), so its judgment never depends on what else is
judged with it: a resumed run judges exactly as an uninterrupted one.

A score head gives ``100 * sigmoid(w . x + b)``; a verdict head gives the probability of "a number" and of each
verdict, read like the prompted modes: the verdict is recorded when it outweighs the number, and there is no score
when the number's probability is below ``MIN_NUMBER_MASS``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embench.errors import EmbenchError
from embench.files import first_error, read_json
from embench.hashing import canonical_json, sha256_file
from embench.judges.backends import JudgeBackend, JudgeOutcome, JudgeRequest, OutcomeCallback
from embench.judges.scoring import MIN_NUMBER_MASS, Reading, ScoreResult, verdict_of
from embench.layout import TRAINED_JUDGE_FILE, TRAINED_WEIGHTS_FILE
from embench.models import PICKLE_SUFFIXES, ResolvedModel, resolve_model

TRAINED_MODE = "trained"
NUMBER_CLASS = "NUMBER"  # the verdict head's class for "the judge gives a number"


class FeatureConfig(BaseModel):
    """How a (question, answer) pair becomes a feature vector."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Chosen on the bundled corpus's held-out groups (README, "The bundled judge, measured honestly").
    layers: tuple[int, ...] = (4, 8, 12)  # hidden-state indices (0 = embeddings)
    # "mean": over the answer's tokens; "last": its last token.
    pooling: tuple[Literal["mean", "last"], ...] = Field(default=("mean",), min_length=1)
    max_question_tokens: int = Field(default=96, ge=8)  # the prompt part keeps its end (the question's last words)
    max_answer_tokens: int = Field(default=160, ge=8)  # the answer keeps its beginning
    # float32: bf16 matrix products are slower than float32 on CPUs without bf16 instructions.
    dtype: Literal["bfloat16", "float32"] = "float32"


class BaseModelRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    reference: str  # what it was resolved from ("default", a folder)
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    hidden_size: int = Field(ge=1)


class TrainedOutput(BaseModel):
    """One judge id a trained judge serves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    verdicts: tuple[str, ...] = ()  # the verdicts it can give (those its training data held)


class TrainingRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data: tuple[dict, ...]  # per source: path (as given), sha256, items
    data_sha256: str  # of the labelled items actually used, whatever files they came from
    seed: int
    l2: float
    heldout_fraction: float
    n_train: int
    n_heldout: int
    embench_version: str


class TrainedJudgeManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["embench-trained-judge"] = "embench-trained-judge"
    format_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    method: Literal["frozen-linear"] = "frozen-linear"
    base_model: BaseModelRef
    features: FeatureConfig
    feature_dim: int = Field(ge=1)
    outputs: dict[str, TrainedOutput]
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    training: TrainingRecord
    metrics: dict = Field(default_factory=dict)  # held-out metrics of the training run, per output


def trained_input(*, question: str | None, answer: str, system: str | None = None) -> str:
    """What a trained judge is asked: the pair itself, as canonical JSON (data, never a template)."""
    return canonical_json({"system": system, "question": question or "", "answer": answer})


def feature_dim(config: FeatureConfig, hidden_size: int) -> int:
    return len(config.pooling) * len(config.layers) * hidden_size


class FeatureExtractor:
    """The frozen base model: (system, question, answer) -> one float32 feature vector."""

    def __init__(self, model: ResolvedModel, config: FeatureConfig):
        from embench.chat import ChatTemplate
        from embench.models import load_causal_lm

        self.model = model
        self.config = config
        self.template = ChatTemplate(model.base_path, model.trust_remote_code)
        self.network = load_causal_lm(model, config.dtype)
        layers = self.network.config.num_hidden_layers
        if not config.layers or max(config.layers) >= layers or min(config.layers) < 0:
            raise EmbenchError(f"feature layers {list(config.layers)} do not fit {model.name}: hidden states "
                               f"0..{layers - 1} can be read")
        # The blocks above the deepest layer read are never run. One block more than that is kept, so that every
        # hidden state read is a block's raw output (the network's last hidden state is the final norm's).
        self.network.model.layers = self.network.model.layers[:max(config.layers) + 1]
        self.hidden_size = self.network.config.hidden_size

    def token_ids(self, system: str | None, question: str, answer: str) -> tuple[list[int], int]:
        """The chat-formatted pair's ids and where the answer starts in them."""
        from embench.prompts import Message, Prompt

        messages = ((Message(role="system", content=system),) if system else ()) + (
            Message(role="user", content=question),)
        prompt = list(self.template.render(Prompt(id="judged", messages=messages)).token_ids)
        prompt = prompt[-self.config.max_question_tokens:]
        answer_ids = self.template.tokenizer(answer, add_special_tokens=False)["input_ids"]
        answer_ids = answer_ids[:self.config.max_answer_tokens] or [self.template.eos_token_id]
        return prompt + answer_ids, len(prompt)

    def features(self, system: str | None, question: str, answer: str):
        import torch

        ids, start = self.token_ids(system, question, answer)
        with torch.inference_mode():
            output = self.network.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        parts = []
        for layer in self.config.layers:
            states = output.hidden_states[layer][0].float()
            for pooling in self.config.pooling:
                parts.append(states[start:].mean(dim=0) if pooling == "mean" else states[-1])
        return torch.cat(parts)

    def close(self) -> None:
        self.network = None


class TrainedJudge:
    """A trained judge folder, checked: manifest valid, weights safetensors with the recorded hash and shapes."""

    def __init__(self, folder: Path, manifest: TrainedJudgeManifest, weights: dict):
        self.folder = folder
        self.manifest = manifest
        self.weights = weights

    @property
    def name(self) -> str:
        """The judge model name every judgment records: changes whenever the weights change."""
        return f"trained:{self.manifest.name}@sha256:{self.manifest.weights_sha256[:16]}"

    @classmethod
    def load(cls, folder: Path) -> "TrainedJudge":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        manifest_path = folder / TRAINED_JUDGE_FILE
        if not manifest_path.is_file():
            raise EmbenchError(f"{folder} is not a trained judge folder (no {TRAINED_JUDGE_FILE}): "
                               "make one with `embench judges train`")
        data = read_json(manifest_path, "a trained judge manifest of `embench judges train`")
        if not isinstance(data, dict):
            raise EmbenchError(f"{manifest_path}: a trained judge manifest must be a JSON object")
        try:
            manifest = TrainedJudgeManifest.model_validate(data)
        except ValidationError as exc:
            field, message = first_error(exc)
            raise EmbenchError(f"{manifest_path}: field '{field or '(file)'}': {message}") from None
        weights_path = folder / TRAINED_WEIGHTS_FILE
        if not weights_path.is_file():
            pickled = sorted(path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
            if pickled:
                raise EmbenchError(f"{folder}: trained judge weights must be {TRAINED_WEIGHTS_FILE} (safetensors); "
                                   f"pickle files ({', '.join(pickled)}) are never loaded")
            raise EmbenchError(f"{folder}: {TRAINED_WEIGHTS_FILE} is missing")
        actual = sha256_file(weights_path)
        if actual != manifest.weights_sha256:
            raise EmbenchError(f"{weights_path}: sha256 {actual[:16]}... does not match the manifest's "
                               f"{manifest.weights_sha256[:16]}...: the weights were changed or corrupted")
        try:
            weights = load_file(weights_path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise EmbenchError(f"{weights_path}: not a readable safetensors file ({exc})") from None
        judge = cls(folder, manifest, weights)
        judge._check_shapes()
        return judge

    def _check_shapes(self) -> None:
        dim = self.manifest.feature_dim
        expected = {"feature_mean": (dim,), "feature_scale": (dim,)}
        for output, spec in self.manifest.outputs.items():
            expected[f"{output}.score.weight"] = (dim,)
            expected[f"{output}.score.bias"] = ()
            if spec.verdicts:
                classes = 1 + len(spec.verdicts)
                expected[f"{output}.verdict.weight"] = (dim, classes)
                expected[f"{output}.verdict.bias"] = (classes,)
        for name, shape in expected.items():
            tensor = self.weights.get(name)
            if tensor is None or tuple(tensor.shape) != shape:
                found = "missing" if tensor is None else f"shape {tuple(tensor.shape)}"
                raise EmbenchError(f"{self.folder / TRAINED_WEIGHTS_FILE}: tensor '{name}' is {found}, expected shape "
                                   f"{shape}: these weights were not made for this manifest's base model "
                                   f"({self.manifest.base_model.name}, feature size {dim})")

    def resolve_base(self) -> ResolvedModel:
        """The base model, checked to be the one the judge was trained on (by weights hash)."""
        base = self.manifest.base_model
        model = resolve_model(base.reference)
        if model.base_sha256 != base.sha256 or model.adapter_sha256 is not None:
            raise EmbenchError(f"trained judge {self.folder}: trained on {base.name} with weights sha256 "
                               f"{base.sha256[:16]}..., but '{base.reference}' resolves to weights "
                               f"{model.base_sha256[:16]}...: retrain it with `embench judges train`")
        return model

    def check_output(self, judge_id: str) -> TrainedOutput:
        output = self.manifest.outputs.get(judge_id)
        if output is None:
            raise EmbenchError(f"trained judge {self.manifest.name} ({self.folder}) has no output for judge "
                               f"'{judge_id}' (it serves: {', '.join(sorted(self.manifest.outputs))})")
        return output

    def predict(self, features, judge_id: str, reading: Reading = Reading()) -> ScoreResult:
        import torch

        output = self.check_output(judge_id)
        x = (features - self.weights["feature_mean"]) / self.weights["feature_scale"]
        score = 100.0 * torch.sigmoid(x @ self.weights[f"{judge_id}.score.weight"]
                                      + self.weights[f"{judge_id}.score.bias"]).item()
        if not output.verdicts:
            return ScoreResult(score=score, verdict=None, valid_mass=1.0, distribution={NUMBER_CLASS: 1.0})
        probs = torch.softmax(x @ self.weights[f"{judge_id}.verdict.weight"]
                              + self.weights[f"{judge_id}.verdict.bias"], dim=0).tolist()
        number_mass, verdict_probs = probs[0], dict(zip(output.verdicts, probs[1:]))
        return ScoreResult(score=score if number_mass >= MIN_NUMBER_MASS else None,
                           verdict=verdict_of(verdict_probs, number_mass, reading.aggregation), valid_mass=1.0,
                           distribution={NUMBER_CLASS: number_mass, **verdict_probs})


def load_trained_judge(reference: str | Path) -> TrainedJudge:
    folder = Path(reference).expanduser()
    if not folder.is_dir():
        raise EmbenchError(f"trained judge {reference} is not a folder: name a folder written by "
                           "`embench judges train` (or leave --judge-model out to use the judges' own)")
    return TrainedJudge.load(folder)


class TrainedJudgeBackend(JudgeBackend):
    """Judges with a trained judge: each request's text is a ``trained_input`` and names the judge id it is for."""

    modes = (TRAINED_MODE,)

    def __init__(self, judge: TrainedJudge):
        self.judge_model = judge
        self.model_name = judge.name
        self.base = judge.resolve_base()
        self.extractor = FeatureExtractor(self.base, judge.manifest.features)
        if self.extractor.hidden_size != judge.manifest.base_model.hidden_size:
            raise EmbenchError(f"trained judge {judge.folder}: made for hidden size "
                               f"{judge.manifest.base_model.hidden_size}, the base has {self.extractor.hidden_size}")
        # The features of the last answers judged: aligned and coherent of one answer share one forward pass.
        self._features: dict[str, object] = {}

    def info(self) -> dict:
        import transformers

        manifest = self.judge_model.manifest
        return {"backend": "trained", "judge_model": self.model_name, "method": manifest.method,
                "trained_judge": manifest.name, "weights_sha256": manifest.weights_sha256,
                "training_data_sha256": manifest.training.data_sha256, "features": manifest.features.model_dump(),
                "transformers": transformers.__version__, "model": self.base.provenance(),
                "chat_template_sha256": self.extractor.template.sha256}

    def features_of(self, text: str):
        features = self._features.get(text)
        if features is None:
            pair = json.loads(text)
            features = self.extractor.features(pair["system"], pair["question"], pair["answer"])
            if len(self._features) >= 4096:
                self._features.clear()
            self._features[text] = features
        return features

    def judge(self, requests: Sequence[JudgeRequest], mode: str, reading: Reading,
              on_outcome: OutcomeCallback) -> None:
        if mode != TRAINED_MODE:
            raise EmbenchError(f"a trained judge offers only mode '{TRAINED_MODE}' (asked for '{mode}')")
        for request in requests:
            if request.judge_id is None:
                raise EmbenchError("a trained judge needs to know which judge each request is for")
            self.judge_model.check_output(request.judge_id)
        for request in requests:
            result = self.judge_model.predict(self.features_of(request.prompt), request.judge_id, reading)
            on_outcome(JudgeOutcome(key=request.key, result=result, raw={"distribution": result.distribution}))

    def close(self) -> None:
        self.extractor.close()
        self._features.clear()
