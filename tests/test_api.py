"""The seams: the package's layers import downwards only, every on-disk name has one definition, and every job's
``prepare`` checks its inputs through the Python API before anything is loaded or written."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import embench.layout
from embench.errors import EmbenchError
from embench.leaderboard.board import PublishSpec
from embench.train.config import TrainConfig
from embench.train.trainer import TrainSpec
from embench.traits.monitor import MonitorSpec
from embench.traits.pipeline import ExtractSpec
from tests.conftest import REPO

PACKAGE = REPO / "embench"
# The layers of ARCHITECTURE.md, lowest first: a module may import its own layer and those below it.
LAYERS = [
    ["errors", "hashing", "home", "hardware", "layout", "sampling", "progress"],
    ["files"],
    ["models", "chat", "prompts", "tasks"],
    ["metrics"],
    ["runs", "results"],
    ["engines"],
    ["judges"],
    ["generate", "api", "perplexity", "benign", "score", "plots", "compare", "importers", "traits", "train"],
    ["leaderboard"],
    ["reproduce", "inspectai"],
    ["cli", "__main__", "__init__"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _part(module: str) -> str:
    """The layer part of a module name: ``embench.traits.monitor`` -> ``traits``; the package itself: ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _embench_imports(path: Path) -> list[str]:
    """Every embench module ``path`` imports, function-local imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [name for name in found if name == "embench" or name.startswith("embench.")]


def _modules() -> list[tuple[str, Path]]:
    return [(".".join(path.relative_to(REPO).with_suffix("").parts), path) for path in sorted(PACKAGE.rglob("*.py"))]


def test_every_module_belongs_to_a_layer_and_imports_only_its_own_or_lower_ones():
    upward = []
    for module, path in _modules():
        assert _part(module) in RANK, f"{module} is in no layer: add it to ARCHITECTURE.md and LAYERS"
        upward += [f"{module} imports {name}" for name in _embench_imports(path)
                   if name != "embench" and RANK[_part(name)] > RANK[_part(module)]]
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    lower = tmp_path / "metrics.py"  # the test above must be able to fail: a numbers module importing the board
    lower.write_text("def f():\n    from embench.leaderboard.board import publish\n", encoding="utf-8")
    names = _embench_imports(lower)
    assert names == ["embench.leaderboard.board"] and RANK[_part(names[0])] > RANK["metrics"]


def test_every_file_name_of_the_layout_is_written_out_only_in_layout():
    names = {value for key, value in vars(embench.layout).items() if key.isupper() and isinstance(value, str)
             and value.rsplit(".", 1)[-1] in ("json", "jsonl", "yaml", "safetensors", "html")}
    assert {"results.json", "train.json", "adapter_config.json", "leaderboard.json"} <= names
    retyped = [f"{path.relative_to(REPO)}:{node.lineno} {node.value}" for _, path in _modules()
               if path.name != "layout.py" for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.Constant) and node.value in names]
    assert not retyped, "\n".join(retyped)


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else []


def test_train_prepare_checks_everything_and_writes_nothing(tmp_path, default_model):
    config = TrainConfig(data="generated:insecure-code", data_size=6, max_steps=1)
    prepared = TrainSpec(config, tmp_path / "run").prepare()
    assert not (tmp_path / "run").exists()
    assert len(prepared.conversations) == 6 and prepared.num_layers == 30
    assert prepared.fingerprint == prepared.config.fingerprint(prepared.data_sha256, default_model.base_sha256)

    other = tmp_path / "other"
    other.mkdir()
    (other / "train.json").write_text(json.dumps({"fingerprint": "another run", "status": "complete"}))
    with pytest.raises(EmbenchError, match="holds a different training run"):
        TrainSpec(config, other).prepare()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(EmbenchError, match="is a file, not a folder"):
        TrainSpec(config, tmp_path / "a-file").prepare()
    assert _files(other) == ["train.json"]


def test_train_prepare_refuses_an_adapter_as_the_model(tmp_path, lora_adapter):
    config = TrainConfig(model=str(lora_adapter), data="generated:insecure-code", data_size=6)
    with pytest.raises(EmbenchError, match="is a LoRA adapter: train from a full model"):
        TrainSpec(config, tmp_path / "run").prepare()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fields, fragment", [
    ({"dtype": "float16"}, "unknown dtype 'float16'"),
    ({"em_threshold": 1.0}, "the EM rate threshold must be in [0, 1)"),
    ({"batch_size": 0}, "the batch size must be at least 1"),
    ({"inputs": ()}, "no runs given"),
])
def test_monitor_prepare_refuses_bad_settings_before_reading_anything(tmp_path, fields, fragment):
    spec = MonitorSpec(**{"inputs": (tmp_path / "missing",), "traits_folder": tmp_path / "traits",
                          "out": tmp_path / "out", **fields})
    with pytest.raises(EmbenchError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        spec.prepare()
    assert _files(tmp_path) == []


def test_extract_prepare_checks_layers_and_the_output_folder_before_loading_weights(tmp_path, default_model):
    with pytest.raises(EmbenchError, match="layer 30"):
        ExtractSpec(out=tmp_path / "directions", only=("honesty",), layers="0,30").prepare()
    with pytest.raises(EmbenchError, match="sweep layer 5 is not among the extracted layers"):
        ExtractSpec(out=tmp_path / "directions", only=("honesty",), layers="4,8", sweep_layers="5").prepare()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(EmbenchError, match="is a file, not a folder"):
        ExtractSpec(out=tmp_path / "a-file", only=("honesty",), layers="4").prepare()
    prepared = ExtractSpec(out=tmp_path / "directions", only=("honesty",), layers="4,8", sweep=False).prepare()
    assert [trait.id for _, trait in prepared.todo] == ["honesty"] and prepared.reused == []
    assert prepared.settings.layers == (4, 8) and _files(tmp_path) == ["a-file"]


def test_publish_prepare_refuses_a_bad_source_and_creates_no_board(tmp_path):
    with pytest.raises(EmbenchError, match="give at least one score directory"):
        PublishSpec(tmp_path / "board", ()).prepare()
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(EmbenchError):
        PublishSpec(tmp_path / "board", (tmp_path / "results.json",)).prepare()
    assert not (tmp_path / "board").exists()
