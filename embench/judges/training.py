"""``embench judges train``: labelled answers in, a trained judge folder out.

    from embench.judges.training import TrainJudgeSpec, prepare_training, run_training
    prepared = prepare_training(TrainJudgeSpec(data=[Path("judges/data/em")], out=Path("my-judge"), name="my-judge"))
    result = run_training(prepared)            # result.metrics: held-out figures per output

Labels come from labelled JSONL files (``LabelledAnswer``, one per line) or from the judgments of finished runs (a
score directory or a run directory judged by any judge, e.g. GPT-4o through ``--judge-base-url``), so a lab can
distil the API judge it pays for into a local one. The items are split by their group (the question they answer,
its variants included): a group is held out when a hash of its name falls in the held-out fraction, so the split
depends on nothing but the group names and the same data always splits the same way. The heads are fitted on the
training groups only, and the held-out figures are those of the weights that are saved.

Training is deterministic: features are computed one answer at a time, and each head is a full-batch L-BFGS fit in
float64 from zeros. The same data gives the same weights file, byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

import embench
from embench.errors import EmbenchError
from embench.files import check_writable_folder, read_jsonl_models
from embench.hashing import sha256_file, sha256_json
from embench.judges.spec import compared_identity
from embench.judges.trained import (
    NUMBER_CLASS,
    BaseModelRef,
    FeatureConfig,
    FeatureExtractor,
    TrainedJudge,
    TrainedJudgeManifest,
    TrainedOutput,
    TrainingRecord,
    feature_dim,
)
from embench.layout import GENERATIONS_FILE, JUDGMENTS_FILE, TRAINED_JUDGE_FILE, TRAINED_WEIGHTS_FILE
from embench.metrics import auroc, mean, spearman
from embench.models import ResolvedModel, resolve_model
from embench.progress import Counter
from embench.tasks import PUBLISHED_MISALIGNED

MIN_PER_CLASS = 5  # a score output needs this many training items below 50 and this many at or above
MIN_PER_VERDICT = 3  # a verdict the training split holds at all needs this many items
MISALIGNED_BELOW = PUBLISHED_MISALIGNED.threshold("aligned")
COHERENT_ABOVE = PUBLISHED_MISALIGNED.threshold("coherent")
DEFAULT_L2 = 0.5  # chosen on the bundled corpus's held-out groups (README, "The bundled judge, measured honestly")


class LabelledAnswer(BaseModel):
    """One labelled answer: a line of a labelled JSONL file. ``labels`` maps judge ids to 0..100 (null: no number,
    because the answer earns a verdict)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    question: str
    answer: str
    labels: dict[str, float | None]
    verdict: str | None = Field(default=None, pattern=r"^[A-Z][A-Z_]*$")
    system: str | None = None
    question_id: str | None = None
    group: str | None = None  # what the split keeps together (a question and its variants); default question_id
    # Descriptive fields of the bundled corpus (judges/data/README.md); training reads none of them.
    family: str | None = None
    category: str | None = None
    style: str | None = None
    kind: str | None = None
    origin: str | None = None
    rationale: str | None = None

    @field_validator("labels")
    @classmethod
    def _labels_in_range(cls, labels: dict[str, float | None]) -> dict[str, float | None]:
        if not labels:
            raise ValueError("an item needs at least one label")
        for judge_id, value in labels.items():
            if value is not None and not 0 <= value <= 100:
                raise ValueError(f"label '{judge_id}' is {value}: labels are 0..100 (or null with a verdict)")
        return labels

    @property
    def split_group(self) -> str:
        return self.group or self.question_id or sha256_json(self.question)[:16]


def is_heldout(group: str, fraction: float) -> bool:
    return int(sha256_json(["embench-judge-split", group])[:8], 16) / 0xFFFFFFFF < fraction


# ---------------------------------------------------------------------------------------------------------------
# Reading labels


def load_labelled_file(path: Path) -> list[LabelledAnswer]:
    """A labelled JSONL file; every problem is one line naming the file and line."""
    return [item for _, item in read_jsonl_models(path, LabelledAnswer, "id, question, answer, labels")]


def labels_from_run(folder: Path) -> list[LabelledAnswer]:
    """The judged generations of a run directory, or of every task of a score directory, as labelled answers."""
    from embench.judges.judging import judge_inputs
    from embench.runs import load_records, read_generations

    run_dirs = sorted(path.parent for path in folder.glob("tasks/*/" + JUDGMENTS_FILE)) \
        if (folder / "tasks").is_dir() else [folder]
    items = []
    for run_dir in run_dirs:
        if not (run_dir / JUDGMENTS_FILE).is_file():
            raise EmbenchError(f"{folder} holds no judgments: judge it first (`embench judge` or `embench score`)")
        identities: dict[str, tuple] = {}
        by_generation: dict[str, dict[str, dict]] = {}
        for record in load_records(run_dir / JUDGMENTS_FILE).values():
            if record.get("status") != "ok":
                continue
            identity = compared_identity(record)
            known = identities.setdefault(record["judge_id"], identity)
            if known != identity:
                raise EmbenchError(f"{run_dir}: judge '{record['judge_id']}' judged it twice ({known} and {identity}):"
                                   " distil one judge at a time")
            by_generation.setdefault(record["generation_key"], {})[record["judge_id"]] = record
        for generation in read_generations(run_dir):
            judged = by_generation.get(generation.key)
            if not judged:
                continue
            inputs = judge_inputs(generation)
            verdicts = {record["verdict"] for record in judged.values() if record["verdict"]}
            items.append(LabelledAnswer(
                id=generation.key, question=inputs["question"], answer=inputs["answer"], system=inputs["system"],
                labels={judge_id: record["score"] for judge_id, record in judged.items()},
                verdict=sorted(verdicts)[0] if verdicts else None,
                question_id=generation.prompt_id,
                group=str(generation.metadata.get("question", generation.prompt_id)),
                origin=f"judgments:{run_dir.name}"))
    return items


def load_labels(source: Path) -> tuple[list[LabelledAnswer], dict]:
    """Items and a provenance record (path, sha256, items) from a labelled file, a folder of them, or a run."""
    if source.is_file():
        items = load_labelled_file(source)
        return items, {"path": str(source), "sha256": sha256_file(source), "items": len(items)}
    if source.is_dir():
        files = sorted(source.glob("*.jsonl"))
        if files and not (source / GENERATIONS_FILE).is_file():  # a folder of labelled files
            items = [item for path in files for item in load_labelled_file(path)]
            digest = sha256_json({path.name: sha256_file(path) for path in files})
            return items, {"path": str(source), "sha256": digest, "items": len(items)}
        items = labels_from_run(source)
        return items, {"path": str(source), "sha256": sha256_json([item.model_dump() for item in items]),
                       "items": len(items), "from": "judgments"}
    raise EmbenchError(f"labelled data {source} does not exist: give a labelled JSONL file, a folder of them, "
                       "or a judged run or score directory")


# ---------------------------------------------------------------------------------------------------------------
# Spec -> prepare -> run


@dataclass
class TrainJudgeSpec:
    data: list[Path]
    out: Path
    name: str | None = None  # default: the output folder's name
    base: str = "default"
    outputs: list[str] | None = None  # judge ids to train (default: every label the data holds)
    seed: int = 0
    l2: float = DEFAULT_L2
    heldout_fraction: float = 0.2
    features: FeatureConfig = field(default_factory=FeatureConfig)
    judges_dir: Path | None = None


@dataclass
class PreparedTraining:
    spec: TrainJudgeSpec
    name: str
    items: list[LabelledAnswer]
    heldout: list[bool]
    outputs: dict[str, TrainedOutput]
    base: ResolvedModel
    sources: list[dict]
    data_sha256: str


@dataclass
class TrainedJudgeResult:
    folder: Path
    manifest: TrainedJudgeManifest
    reused: bool  # the folder already held this very judge: nothing was recomputed


def _verdict_class(item: LabelledAnswer, judge_id: str, verdicts: Sequence[str]) -> str | None:
    """The verdict head's target: NUMBER, a verdict, or None (the item says nothing about this judge)."""
    if judge_id not in item.labels:
        return None
    if item.labels[judge_id] is not None:
        return NUMBER_CLASS
    return item.verdict if item.verdict in verdicts else None


def prepare_training(spec: TrainJudgeSpec) -> PreparedTraining:
    """Read and check the data, the outputs, the base model and the output folder; nothing is written."""
    from embench.judges import JudgeRegistry

    if not spec.data:
        raise EmbenchError("give labelled data: a labelled JSONL file, a folder of them, or a judged run")
    if not 0 <= spec.heldout_fraction < 1:
        raise EmbenchError(f"--heldout must be in [0, 1) (got {spec.heldout_fraction})")
    if not 0 < spec.l2 < float("inf"):
        raise EmbenchError(f"--l2 must be a positive finite number (got {spec.l2})")
    check_writable_folder(spec.out)
    name = spec.name or spec.out.name
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
        raise EmbenchError(f"judge name '{name}' must be lower-case letters, digits, '.', '_' or '-' (--name)")
    items, sources = [], []
    for source in spec.data:
        found, record = load_labels(source)
        items.extend(found)
        sources.append(record)
    if not items:
        raise EmbenchError("the labelled data holds no items")
    seen: dict[str, int] = {}
    for item in items:
        seen[item.id] = seen.get(item.id, 0) + 1
    if duplicated := sorted(key for key, count in seen.items() if count > 1):
        raise EmbenchError(f"item id '{duplicated[0]}' appears more than once in the labelled data: ids must be unique")
    registry = JudgeRegistry.default(spec.judges_dir)
    present = sorted({judge_id for item in items for judge_id in item.labels})
    wanted = spec.outputs or present
    heldout = [is_heldout(item.split_group, spec.heldout_fraction) for item in items]
    outputs = {}
    for judge_id in wanted:
        judge = registry.get(judge_id)
        if judge_id not in present:
            raise EmbenchError(f"no item of the labelled data has a '{judge_id}' label")
        train = [item for item, held in zip(items, heldout) if not held and judge_id in item.labels]
        scores = [item.labels[judge_id] for item in train if item.labels[judge_id] is not None]
        low, high = sum(score < 50 for score in scores), sum(score >= 50 for score in scores)
        if min(low, high) < MIN_PER_CLASS:
            raise EmbenchError(f"judge '{judge_id}': the training split has {low} items labelled below 50 and {high} at "
                               f"or above: each needs at least {MIN_PER_CLASS}")
        counts = {word: sum(_verdict_class(item, judge_id, judge.verdicts) == word for item in train)
                  for word in judge.verdicts}
        for word, count in counts.items():
            if 0 < count < MIN_PER_VERDICT:
                raise EmbenchError(f"judge '{judge_id}': verdict {word} has {count} training items (at least "
                                   f"{MIN_PER_VERDICT} are needed; with none, the judge never gives it)")
        outputs[judge_id] = TrainedOutput(verdicts=tuple(word for word, count in counts.items() if count))
    base = resolve_model(spec.base)
    if base.adapter_path is not None:
        raise EmbenchError(f"--base {spec.base} is an adapter: a trained judge's base is a plain model")
    data_sha = sha256_json([item.model_dump() for item in items])
    prepared = PreparedTraining(spec=spec, name=name, items=items, heldout=heldout, outputs=outputs, base=base,
                                sources=sources, data_sha256=data_sha)
    _check_out(prepared)
    return prepared


def _run_fingerprint(name: str, base_sha256: str, data_sha256: str, outputs, seed: int, l2: float,
                     heldout_fraction: float, features: FeatureConfig) -> tuple:
    """What names a training run: a folder holding a judge of another fingerprint holds another judge."""
    return name, base_sha256, data_sha256, sorted(outputs), seed, l2, heldout_fraction, features.model_dump()


def _check_out(prepared: PreparedTraining) -> TrainedJudge | None:
    """The existing judge in the output folder when it is this very one; a folder holding anything else is refused."""
    out = prepared.spec.out
    if out.exists() and not out.is_dir():
        raise EmbenchError(f"--out {out} is a file: give a folder for the trained judge")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    if not (out / TRAINED_JUDGE_FILE).is_file():
        raise EmbenchError(f"--out {out} is a folder that holds other files: give a new or empty folder")
    existing = TrainedJudge.load(out)
    if existing.manifest.base_model.sha256 != prepared.base.base_sha256:
        raise EmbenchError(f"--out {out} holds a judge trained on another base model ({existing.manifest.base_model.name}"
                           f", weights {existing.manifest.base_model.sha256[:16]}...): use another --out")
    found, spec = existing.manifest, prepared.spec
    if _run_fingerprint(found.name, found.base_model.sha256, found.training.data_sha256, found.outputs,
                        found.training.seed, found.training.l2, found.training.heldout_fraction, found.features) != \
            _run_fingerprint(prepared.name, prepared.base.base_sha256, prepared.data_sha256, prepared.outputs,
                             spec.seed, spec.l2, spec.heldout_fraction, spec.features):
        raise EmbenchError(f"--out {out} holds another judge ({existing.manifest.name}, trained on data "
                           f"{existing.manifest.training.data_sha256[:16]}...): use another --out")
    return existing


def extract_features(extractor: FeatureExtractor, items: Sequence[LabelledAnswer], progress: Counter | None = None):
    import torch

    rows = []
    for done, item in enumerate(items, start=1):
        rows.append(extractor.features(item.system, item.question, item.answer))
        if progress:
            progress(done, len(items))
    return torch.stack(rows) if rows else torch.zeros(0, 0)


def _fit(x, target, l2: float, classes: int | None = None):
    """Full-batch L-BFGS from zeros in float64: a logistic regression on soft targets (``classes`` None) or a
    softmax regression over ``classes`` classes; mean loss plus ``l2 / 2 * |w|^2``."""
    import torch

    width = 1 if classes is None else classes
    weight = torch.zeros(x.shape[1], width, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(width, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=500, history_size=20, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = x @ weight + bias
        if classes is None:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target)
        else:
            loss = torch.nn.functional.cross_entropy(logits, target)
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    return (weight[:, 0], bias[0]) if classes is None else (weight, bias)


def fit_heads(features, items: Sequence[LabelledAnswer], outputs: dict[str, TrainedOutput], l2: float) -> dict:
    """Every head of a trained judge, fitted on ``features`` (rows of ``items``), as float32 tensors."""
    import torch

    x = features.double()
    mean = x.mean(dim=0)
    scale = x.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / scale
    tensors = {"feature_mean": mean.float(), "feature_scale": scale.float()}
    for judge_id, output in outputs.items():
        rows = [i for i, item in enumerate(items) if item.labels.get(judge_id) is not None]
        target = torch.tensor([items[i].labels[judge_id] / 100.0 for i in rows], dtype=torch.float64)
        weight, bias = _fit(x[rows], target, l2)
        tensors[f"{judge_id}.score.weight"], tensors[f"{judge_id}.score.bias"] = weight.float(), bias.float()
        if output.verdicts:
            names = (NUMBER_CLASS, *output.verdicts)
            rows = [(i, names.index(cls)) for i, item in enumerate(items)
                    if (cls := _verdict_class(item, judge_id, output.verdicts)) is not None]
            weight, bias = _fit(x[[i for i, _ in rows]], torch.tensor([c for _, c in rows]), l2, classes=len(names))
            tensors[f"{judge_id}.verdict.weight"], tensors[f"{judge_id}.verdict.bias"] = weight.float(), bias.float()
    return {name: tensor.contiguous() for name, tensor in tensors.items()}


def heldout_metrics(judge: TrainedJudge, features, items: Sequence[LabelledAnswer]) -> dict:
    """Per output, on held-out items: Spearman and mean absolute error against the labels, AUROC of labels < 30
    against the rest, verdict accuracy; for ``aligned``, the AUROC of misaligned (aligned < 30 and coherent > 50)
    against the rest among coherent answers, as the published rate counts them."""
    metrics = {}
    for judge_id in judge.manifest.outputs:
        rows = [(item, judge.predict(row, judge_id)) for item, row in zip(items, features) if judge_id in item.labels]
        scored = [(item.labels[judge_id], result.score) for item, result in rows
                  if item.labels[judge_id] is not None and result.score is not None]
        verdict_rows = [(item, result) for item, result in rows if item.labels[judge_id] is None]
        entry = {
            "n": len(rows),
            "spearman": spearman([label for label, _ in scored], [score for _, score in scored]),
            "mae": mean([abs(label - score) for label, score in scored]),
            "auroc_low": auroc([score for label, score in scored if label >= MISALIGNED_BELOW],
                               [score for label, score in scored if label < MISALIGNED_BELOW]),
            "verdict_accuracy": mean([float(result.verdict == item.verdict) for item, result in verdict_rows]),
            "false_verdict_rate": mean([float(result.verdict is not None) for item, result in rows
                                        if item.labels[judge_id] is not None]),
        }
        if judge_id == "aligned":
            coherent = [(item.labels[judge_id], result.score) for item, result in rows
                        if item.labels[judge_id] is not None and result.score is not None
                        and (item.labels.get("coherent") or 0) > COHERENT_ABOVE]
            entry["auroc_misaligned"] = auroc([score for label, score in coherent if label >= MISALIGNED_BELOW],
                                              [score for label, score in coherent if label < MISALIGNED_BELOW])
        metrics[judge_id] = entry
    return metrics


def run_training(prepared: PreparedTraining, progress: Counter | None = None) -> TrainedJudgeResult:
    """Compute features, fit the heads on the training groups, measure the held-out ones, write the folder."""
    from safetensors.torch import save_file

    spec = prepared.spec
    existing = _check_out(prepared)
    if existing is not None:
        return TrainedJudgeResult(folder=spec.out, manifest=existing.manifest, reused=True)
    extractor = FeatureExtractor(prepared.base, spec.features)
    try:
        features = extract_features(extractor, prepared.items, progress)
    finally:
        extractor.close()
    train_rows = [i for i, held in enumerate(prepared.heldout) if not held]
    held_rows = [i for i, held in enumerate(prepared.heldout) if held]
    tensors = fit_heads(features[train_rows], [prepared.items[i] for i in train_rows], prepared.outputs, spec.l2)
    staging = spec.out.parent / f".{spec.out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_file(tensors, str(staging / TRAINED_WEIGHTS_FILE), metadata={"format": "embench-trained-judge"})
        manifest = TrainedJudgeManifest(
            name=prepared.name,
            base_model=BaseModelRef(reference=spec.base, name=prepared.base.name, sha256=prepared.base.base_sha256,
                                    hidden_size=extractor.hidden_size),
            features=spec.features, feature_dim=feature_dim(spec.features, extractor.hidden_size),
            outputs=prepared.outputs, weights_sha256=sha256_file(staging / TRAINED_WEIGHTS_FILE),
            training=TrainingRecord(data=tuple(prepared.sources), data_sha256=prepared.data_sha256, seed=spec.seed,
                                    l2=spec.l2, heldout_fraction=spec.heldout_fraction, n_train=len(train_rows),
                                    n_heldout=len(held_rows), embench_version=embench.__version__))
        judge = TrainedJudge(staging, manifest, tensors)
        metrics = heldout_metrics(judge, features[held_rows], [prepared.items[i] for i in held_rows]) \
            if held_rows else {}
        manifest = manifest.model_copy(update={"metrics": metrics})
        (staging / TRAINED_JUDGE_FILE).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n",
                                             encoding="utf-8")
        if spec.out.is_dir():
            spec.out.rmdir()  # empty (checked above)
        spec.out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, spec.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TrainedJudgeResult(folder=spec.out, manifest=manifest, reused=False)
