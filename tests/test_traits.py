"""Trait directions on the bundled model: trait files and their minimum counts, activation reading (padding, layer
convention, steering hook), extraction through the real CLI with held-out probe accuracy and a steering sweep,
saved directions and their model-hash check, the persona vector cache, and the importer of the published trait file.

Extraction in the shared fixture reads layers 6-18 of the seven alignment traits and one control trait, and sweeps
three layers, to keep the module's run time modest; the persona vector test extracts `evil` in full (every layer, the
default six-layer sweep), as the trainer does. The reference data is read in place, never copied into the project.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from embench.errors import EmbenchError
from embench.hashing import sha256_file, sha256_json
from embench.traits.spec import load_trait_file, load_traits
from tests.conftest import REPO, assert_one_line_error, run_embench

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "trait-monitor" / "traits.yaml"
PASSAGES = PUBLISHED.parent / "contrastive_passages.yaml"
SHIPPED = REPO / "tasks" / "traits"
ALIGNMENT = ("honesty", "sycophancy", "harmlessness", "power-seeking", "helpfulness", "confidence", "corrigibility")
CONTROL = ("verbosity",)
LAYERS = tuple(range(6, 19))
SWEEP_LAYERS = (9, 12, 15)


# --- trait files -----------------------------------------------------------------------------------------------


def test_shipped_traits_have_the_required_kinds_and_counts():
    traits = {trait.id: trait for _, trait in load_traits(SHIPPED)}
    kinds = {kind: sorted(trait_id for trait_id, trait in traits.items() if trait.kind == kind)
             for kind in ("alignment", "control", "persona")}
    assert kinds == {
        "alignment": sorted(["honesty", "sycophancy", "harmlessness", "power-seeking", "helpfulness", "confidence",
                             "corrigibility"]),
        "control": sorted(["verbosity", "formality", "technicality", "humour", "concreteness", "warmth", "creativity"]),
        "persona": ["evil"],
    }
    for trait in traits.values():
        assert len(trait.positive_prompts) >= 5 and len(trait.negative_prompts) >= 5
        assert len(trait.questions) >= 30 and len(trait.eval_prompts) >= 5
        assert not set(trait.positive_prompts) & set(trait.negative_prompts)
    # The questions are shared through one file, which every trait's content hash covers.
    assert len({trait.questions for trait in traits.values()}) == 1


def _write_trait(folder: Path, **changes) -> Path:
    data = yaml.safe_load((SHIPPED / "honesty.yaml").read_text())
    data.update({"questions": list(load_trait_file(SHIPPED / "honesty.yaml").questions), **changes})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data['id']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("field, value, message", [
    ("negative_prompts", ["Lie.", "Mislead.", "Deceive.", "Fabricate."], "needs at least 5 system prompts, has 4"),
    ("positive_prompts", ["Be honest."] * 5, "holds the same system prompt twice"),
    ("questions", [f"Question {index}?" for index in range(29)], "needs at least 30 questions, has 29"),
    ("eval_prompts", ["One?", "Two?"], "needs at least 5 eval prompts, has 2"),
])
def test_trait_file_with_too_few_entries_is_refused_naming_file_and_field(tmp_path, field, value, message):
    path = _write_trait(tmp_path / "traits", **{field: value})
    for args in (("traits", "list", "--traits", str(path.parent)),
                 ("traits", "extract", "--traits", str(path), "--out", str(tmp_path / "out"))):
        line = assert_one_line_error(run_embench(*args), str(path), f"field '{field}'", message,
                                     out=tmp_path / "out")
        assert f"{path}:" in line


def test_shared_question_file_with_too_few_questions_is_refused(tmp_path):
    folder = tmp_path / "traits"
    _write_trait(folder, questions="few.questions.yaml")
    (folder / "few.questions.yaml").write_text(yaml.safe_dump(
        {"id": "few", "version": 1, "questions": ["Why?"] * 1 + [f"Q{index}?" for index in range(10)]}))
    assert_one_line_error(run_embench("traits", "list", "--traits", str(folder)), str(folder / "few.questions.yaml"),
                          "field 'questions'", "needs at least 30 questions, has 11")
    (folder / "few.questions.yaml").unlink()
    assert_one_line_error(run_embench("traits", "list", "--traits", str(folder)), "field 'questions'",
                          "question file", "does not exist")


# --- reading and steering activations ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def network_fp32(default_model):
    from embench.models import load_causal_lm

    return load_causal_lm(default_model, "float32")


@pytest.fixture(scope="module")
def template(default_model):
    from embench.chat import ChatTemplate

    return ChatTemplate(default_model.base_path)


def test_padded_batches_read_what_each_prompt_reads_alone_and_follow_the_layer_convention(network_fp32, template):
    import torch

    from embench.traits.activations import block_activations

    rows = [template.user_turn_ids(text) for text in ("Hi.", "How do tides work, and why are there two a day?",
                                                       "Name a colour.")]
    assert len({len(row) for row in rows}) == 3
    layers = [0, 7, 29]
    batched = block_activations(network_fp32, rows, layers, pad_id=2, batch_size=8)
    for index, row in enumerate(rows):
        alone = block_activations(network_fp32, [row], layers, pad_id=2)[0]
        torch.testing.assert_close(batched[index], alone, rtol=1e-4, atol=1e-3)
        with torch.inference_mode():
            hidden = network_fp32(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states
        # Block output l is hidden_states[l + 1]; transformers takes the last entry after the final norm.
        torch.testing.assert_close(alone[0], hidden[1][0, -1], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(alone[1], hidden[8][0, -1], rtol=1e-4, atol=1e-3)
        assert not torch.allclose(alone[2], hidden[30][0, -1], atol=1.0)


def test_steering_hook_adds_its_vector_to_the_block_output_and_is_removed(network_fp32, template):
    import torch

    from embench.traits.activations import block_activations, steering

    rows = [template.user_turn_ids("Tell me about rivers.")]
    before = block_activations(network_fp32, rows, [10, 11], pad_id=2)[0]
    vector = torch.randn(network_fp32.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 20
    with steering(network_fp32, 10, vector):
        steered = block_activations(network_fp32, rows, [10, 11], pad_id=2)[0]
    torch.testing.assert_close(steered[0], before[0] + vector, rtol=1e-5, atol=1e-3)
    assert (steered[1] - before[1]).norm() > 1.0  # the next block sees the steered stream
    torch.testing.assert_close(block_activations(network_fp32, rows, [10, 11], pad_id=2)[0], before)


# --- extraction through the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, default_model) -> Path:
    out = tmp_path_factory.mktemp("directions") / "smollm2"
    args = ["traits", "extract", "--model", "default", "--layers", f"{LAYERS[0]}-{LAYERS[-1]}", "--sweep-layers",
            ",".join(map(str, SWEEP_LAYERS)), "--out", str(out)]
    for trait in ALIGNMENT + CONTROL:
        args += ["--trait", trait]
    started = time.monotonic()
    result = run_embench(*args, check=True)
    elapsed = time.monotonic() - started
    print(result.stdout)
    print(f"extracted {len(ALIGNMENT + CONTROL)} traits (layers {LAYERS[0]}-{LAYERS[-1]}) in {elapsed:.0f} s")
    return out


def test_directions_separate_positive_from_negative_on_held_out_questions(extracted):
    out = extracted
    report = {}
    for trait in ALIGNMENT + CONTROL:
        metadata = json.loads((out / f"{trait}.json").read_text())
        probe = {row["layer"]: row for row in metadata["probe"]}
        assert sorted(probe) == list(LAYERS)
        assert all(row["heldout_samples"] == 100 for row in probe.values())  # 10 held-out questions x 10 prompts
        chosen = probe[metadata["chosen_layer"]]
        report[trait] = {"chosen layer": metadata["chosen_layer"], "accuracy": chosen["accuracy"],
                         "paired": chosen["paired_accuracy"], "best": max(row["accuracy"] for row in probe.values()),
                         "best paired": max(row["paired_accuracy"] for row in probe.values()),
                         "mean": sum(row["accuracy"] for row in probe.values()) / len(probe)}
    for trait, numbers in report.items():
        print(f"{trait:14s}", ", ".join(f"{name} {value:.2f}" if isinstance(value, float) else f"{name} {value}"
                                         for name, value in numbers.items()))
    alignment = [report[trait] for trait in ALIGNMENT]
    # Above chance (0.5) for every alignment trait at its best layer, and on average over layers and traits.
    assert all(numbers["best"] > 0.6 for numbers in alignment)
    assert sum(numbers["mean"] for numbers in alignment) / len(alignment) > 0.6
    # With each question's own offset removed, the directions classify nearly every held-out activation somewhere.
    assert all(numbers["best paired"] > 0.85 for numbers in alignment)


def test_steering_sweep_is_saved_and_chooses_the_layer_with_the_largest_effect(extracted):
    out = extracted
    for trait in ALIGNMENT + CONTROL:
        metadata = json.loads((out / f"{trait}.json").read_text())
        sweep = metadata["steering"]
        assert [row["layer"] for row in sweep["layers"]] == list(SWEEP_LAYERS)
        best = max(sweep["layers"], key=lambda row: row["effect"])
        assert metadata["chosen_layer"] == sweep["chosen_layer"] == best["layer"]
        assert metadata["chosen_by"] == "steering sweep"
        for row in sweep["layers"]:
            assert row["effect"] == pytest.approx(row["gap_plus"] - row["gap_minus"])
            # Steering at a quarter of the residual norm changes part of the greedy answer, not all of it.
            assert 0.0 < row["token_change_plus"] < 1.0 and 0.0 < row["token_change_minus"] < 1.0
        assert len(sweep["eval_prompts"]) == 6 and len(sweep["reference_answers"]["positive"]) == 6
    # Steering along a trait direction moves the model towards the trait's positive answers at the chosen layer.
    effects = [max(row["effect"] for row in json.loads((out / f"{trait}.json").read_text())["steering"]["layers"])
               for trait in ALIGNMENT + CONTROL]
    print("largest steering effects (nats/token):", [round(effect, 3) for effect in effects])
    assert sum(effect > 0 for effect in effects) >= len(effects) - 1


def test_directions_are_saved_and_loaded_with_their_metadata(extracted, default_model):
    import torch

    import embench
    from embench.traits.store import load_directions

    out = extracted
    loaded = load_directions(out, default_model)
    assert sorted(loaded) == sorted(ALIGNMENT + CONTROL)
    for trait_id, saved in loaded.items():
        metadata = saved.metadata
        definition = load_trait_file(SHIPPED / f"{trait_id}.yaml")
        assert metadata["trait"]["id"] == trait_id and metadata["trait"]["version"] == definition.version
        assert metadata["trait"]["sha256"] == definition.sha256
        assert metadata["model"]["sha256"] == sha256_json(default_model.identity)
        assert metadata["model"]["base_sha256"] == default_model.base_sha256
        assert metadata["model"]["adapter_sha256"] is None
        assert metadata["model"]["n_layers"] == 30 and metadata["model"]["hidden_size"] == 576
        assert metadata["embench_version"] == embench.__version__
        assert metadata["extraction"]["position"] == "last" and metadata["extraction"]["layers"] == list(LAYERS)
        assert "hidden_states[l + 1]" in metadata["extraction"]["layer_convention"]
        assert len(metadata["prompts_sha256"]) == 64
        assert metadata["tensors"]["sha256"] == sha256_file(out / f"{trait_id}.safetensors")
        assert saved.layers == LAYERS and saved.directions.shape == (len(LAYERS), 576)
        torch.testing.assert_close(saved.directions.norm(dim=-1), torch.ones(len(LAYERS)))
        difference = saved.positive_mean - saved.negative_mean
        torch.testing.assert_close(saved.directions, difference / difference.norm(dim=-1, keepdim=True))
        assert saved.direction().equal(saved.directions[LAYERS.index(saved.chosen_layer)])
    with pytest.raises(EmbenchError, match="layer 20 is not among the extracted layers"):
        loaded["honesty"].direction(20)
    with pytest.raises(EmbenchError, match="layer 30 is outside the model"):
        loaded["honesty"].direction(30)


def test_extract_again_reuses_every_trait_without_rewriting(extracted):
    out = extracted
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    result = run_embench("traits", "extract", "--layers", f"{LAYERS[0]}-{LAYERS[-1]}", "--sweep-layers",
                         ",".join(map(str, SWEEP_LAYERS)), "--trait", "honesty", "--trait", "verbosity",
                         "--out", str(out), check=True)
    assert result.stdout.count("reused") == 2
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before
    listed = run_embench("traits", "list", "--directions", str(out), check=True).stdout
    assert all(trait in listed for trait in ALIGNMENT + CONTROL)


def test_directions_of_another_model_are_refused(extracted, default_model, lora_adapter, tmp_path):
    from embench.models import resolve_model
    from embench.traits.store import load_directions

    out = extracted
    adapted = resolve_model(str(lora_adapter))
    with pytest.raises(EmbenchError, match="was extracted from SmolLM2-135M-Instruct") as raised:
        load_directions(out, adapted)
    assert adapted.adapter_sha256[:12] in str(raised.value)
    # Monitoring a fine-tune of the same base compares the base weights only.
    assert sorted(load_directions(out, adapted, compare="base")) == sorted(ALIGNMENT + CONTROL)
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    assert_one_line_error(run_embench("traits", "extract", "--model", str(lora_adapter), "--trait", "honesty",
                                      "--out", str(out)), f"{out} was extracted from", "re-extract")
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before
    # Other settings into the same folder are refused too, before any model work.
    assert_one_line_error(run_embench("traits", "extract", "--position", "response", "--layers", "6-18",
                                      "--trait", "warmth", "--out", str(out)), "other settings", "another --out")


def test_tampered_tensors_are_refused(extracted, tmp_path):
    import shutil

    from embench.traits.store import load_directions

    out = extracted
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    data = bytearray((copy / "honesty.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "honesty.safetensors").write_bytes(bytes(data))
    with pytest.raises(EmbenchError, match="does not match its metadata"):
        load_directions(copy)


@pytest.mark.parametrize("args, fragments", [
    (("--trait", "honesty", "--layers", "30"), ("layer 30 is outside the model", "30 decoder layers (0-29)")),
    (("--trait", "honesty", "--layers", "4-40"), ("layer 30 is outside the model",)),
    (("--trait", "honesty", "--layers", "six"), ("is not a layer list",)),
    (("--trait", "honesty", "--layers", "6-12", "--sweep-layers", "15"),
     ("sweep layer 15 is not among the extracted layers",)),
    (("--trait", "honesty", "--position", "middle"), ("unknown position 'middle'",)),
    (("--trait", "greed",), ("unknown trait(s) greed",)),
])
def test_bad_extraction_arguments(tmp_path, args, fragments):
    out = tmp_path / "out"
    assert_one_line_error(run_embench("traits", "extract", *args, "--out", str(out)), *fragments, out=out)


# --- response position --------------------------------------------------------------------------------------------


def test_response_position_averages_over_a_greedy_response(default_model, tmp_path):
    import torch

    from embench.traits.extract import ExtractionSettings
    from embench.traits.pipeline import extract_traits
    from embench.traits.store import load_directions

    # The smallest trait the schema allows (5 + 5 prompts, 30 questions): 300 responses of 32 tokens.
    path = _write_trait(tmp_path / "traits", id="honesty-small",
                        questions=list(load_trait_file(SHIPPED / "honesty.yaml").questions[:30]))
    traits = load_traits(path)
    directions = {}
    for position in ("last", "response"):
        started = time.monotonic()
        extract_traits(default_model, traits, tmp_path / position,
                       ExtractionSettings(layers=(8, 12), position=position, sweep=False))
        print(f"{position}: {time.monotonic() - started:.0f} s")
        directions[position] = load_directions(tmp_path / position, default_model)["honesty-small"]
    response = directions["response"].metadata
    assert response["extraction"]["position"] == "response" and response["extraction"]["response_tokens"] == 32
    assert response["chosen_by"] == "middle extracted layer" and response["steering"] is None
    cosine = torch.nn.functional.cosine_similarity(directions["last"].directions, directions["response"].directions)
    print("cosine last vs response directions:", cosine.tolist(), "response probe:",
          [(row["layer"], round(row["accuracy"], 2)) for row in response["probe"]])
    assert (cosine < 0.99).all()  # a different activation is read
    assert all(row["accuracy"] > 0.5 for row in response["probe"])


# --- the persona vector of the steering defense ------------------------------------------------------------------


def test_persona_vector_is_extracted_once_and_then_read_from_the_cache(default_model, embench_home):
    import torch

    from embench.traits import persona_vector

    # The training tests may already have extracted it in this session; either way it is extracted once per model.
    vector, layer = persona_vector(default_model)
    assert vector.shape == (576,) and torch.linalg.vector_norm(vector).item() == pytest.approx(1.0, abs=1e-5)
    model_folder = embench_home / "traits" / sha256_json(default_model.identity)[:16]
    (folder,) = [path for path in model_folder.iterdir() if path.is_dir()]
    metadata = json.loads((folder / "evil.json").read_text())
    assert folder.name == f"evil-{load_trait_file(SHIPPED / 'evil.yaml').sha256[:12]}-{metadata['extraction']['dtype']}"
    assert layer == metadata["chosen_layer"] and metadata["chosen_by"] == "steering sweep"
    assert metadata["extraction"]["layers"] == list(range(30))
    assert max(row["effect"] for row in metadata["steering"]["layers"]) > 0
    before = (folder / "evil.safetensors").stat().st_mtime_ns

    again, again_layer = persona_vector(default_model, "evil")
    middle, middle_layer = persona_vector(default_model, "evil", layer=3)
    assert again.equal(vector) and again_layer == layer
    assert middle_layer == 3 and not middle.equal(vector)
    assert (folder / "evil.safetensors").stat().st_mtime_ns == before  # read back, never re-extracted
    with pytest.raises(EmbenchError, match="layer 30 is outside the model"):
        persona_vector(default_model, "evil", layer=30)
    with pytest.raises(EmbenchError, match="unknown trait"):
        persona_vector(default_model, "greed")


# --- the published trait file ------------------------------------------------------------------------------------


def test_importer_reads_the_published_trait_file(tmp_path):
    published = yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))
    out = tmp_path / "imported"
    result = run_embench("traits", "import", str(PUBLISHED), "--out", str(out), check=True)
    assert "imported 16 trait(s)" in result.stdout
    traits = {trait.id: trait for _, trait in load_traits(out)}
    assert sorted(traits) == sorted(published["traits"])
    controls = {"verbosity", "formality", "technicality", "humor", "concreteness", "warmth", "creativity"}
    assert {trait_id for trait_id, trait in traits.items() if trait.kind == "control"} == controls
    eval_prompts = [prompt for prompts in published["eval_prompts"].values() for prompt in prompts]
    for trait_id, source in published["traits"].items():
        trait = traits[trait_id]
        assert list(trait.positive_prompts) == source["positive_system_prompts"]
        assert list(trait.negative_prompts) == source["negative_system_prompts"]
        assert (trait.positive_label, trait.negative_label) == (source["positive_label"], source["negative_label"])
        assert list(trait.questions) == published["questions"]
        assert list(trait.eval_prompts) == list(dict.fromkeys(eval_prompts))
    assert (out / "traits.questions.yaml").is_file()
    # Importing again into the same folder changes nothing; a different file there is refused.
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    run_embench("traits", "import", str(PUBLISHED), "--out", str(out), check=True)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    (out / "honesty.yaml").write_text((out / "honesty.yaml").read_text() + "# edited\n")
    assert_one_line_error(run_embench("traits", "import", str(PUBLISHED), "--out", str(out)),
                          "honesty.yaml already exists with other content")


def test_importer_refuses_files_in_other_formats(tmp_path):
    assert_one_line_error(run_embench("traits", "import", str(PASSAGES), "--out", str(tmp_path / "a")),
                          "is not in the published trait format", out=tmp_path / "a")
    assert_one_line_error(run_embench("traits", "import", str(PUBLISHED), "--control", "sarcasm",
                                      "--out", str(tmp_path / "b")), "sarcasm", out=tmp_path / "b")
    assert_one_line_error(run_embench("traits", "import", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "c")),
                          "does not exist", out=tmp_path / "c")
