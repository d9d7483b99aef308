"""Bad input never crashes and never escapes: option parse errors, encodings, corrupt embench files, unbounded
work, accepted garbage. The command-line cases run the real CLI; the readers are also fed random bytes and mutated
YAML / JSON Lines in-process (a fuzz pass with a fixed seed), which may only ever end in one-line EmbenchErrors."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from embench.errors import EmbenchError
from embench.files import MAX_YAML_NODES, read_json, read_json_object, read_jsonl, read_yaml
from embench.importers import read_published
from embench.prompts import load_prompts
from embench.runs import read_generations
from embench.tasks import load_task_file
from tests.conftest import assert_one_line_error, run_embench

TASK = """id: tiny
version: 1
family: ood
description: a task
questions:
  - id: q1
    paraphrases: ["Hello?"]
"""


@pytest.mark.parametrize("args, fragment", [
    (["score", "--nosuch"], "No such option: --nosuch"),
    (["train"], "Missing option '--data'"),
    (["generate", "-n", "many"], "Invalid value for '-n'"),
    (["judges", "list", "--bad"], "No such option: --bad"),
    (["nosuchcommand"], "No such command"),
])
def test_option_parse_errors_are_one_line_with_where_to_look(args, fragment):
    line = assert_one_line_error(run_embench(*args), fragment)
    assert line.endswith("--help)"), line


def test_text_that_is_not_utf8_is_one_line(tmp_path):
    utf16 = tmp_path / "task.yaml"
    utf16.write_text(TASK, encoding="utf-16")
    assert_one_line_error(run_embench("tasks", "validate", str(utf16)), str(utf16), "not UTF-8 text")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n', encoding="utf-16")
    out = tmp_path / "run"
    assert_one_line_error(run_embench("generate", "--prompts", str(prompts), "--out", str(out)), "not UTF-8 text",
                          out=out)
    home = tmp_path / "home"
    (home / "judges").mkdir(parents=True)
    (home / "judges" / "broken.yaml").write_bytes(bytes(range(256)))
    assert_one_line_error(run_embench("judges", "list", env={"EMBENCH_HOME": str(home)}), "broken.yaml",
                          "not UTF-8 text")


def test_a_lone_surrogate_escape_is_refused_and_a_real_pair_is_text(tmp_path):
    lone = tmp_path / "lone.jsonl"
    lone.write_text('{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": "bad \\ud800 here"}\n', encoding="utf-8")
    with pytest.raises(EmbenchError, match=r"lone.jsonl:2: .*surrogate"):
        load_prompts(lone)
    pair = tmp_path / "pair.jsonl"
    pair.write_text('{"id": "a", "prompt": "smile \\ud83d\\ude00"}\n', encoding="utf-8")
    assert load_prompts(pair)[0].messages[-1].content == "smile \U0001F600"


@pytest.mark.parametrize("text, fragment", [
    ("a: 1\nb: 2\na: 3\n", "key 'a' is given twice (first on line 1)"),
    ("outer:\n  x: 1\n  x: 2\n", "key 'x' is given twice"),
    ("a: [1, 2\n", "YAML syntax error"),
    ("[" * 5000 + "]" * 5000, "YAML"),
])
def test_yaml_refuses_duplicate_keys_syntax_errors_and_deep_nesting(tmp_path, text, fragment):
    path = tmp_path / "file.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(EmbenchError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        read_yaml(path)


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path):
    bomb = tmp_path / "task.yaml"
    bomb.write_text(TASK + "metadata_bomb:\n" + _alias_bomb(), encoding="utf-8")
    with pytest.raises(EmbenchError, match=f"expand to more than {MAX_YAML_NODES:,} nodes"):
        load_task_file(bomb)
    shared = tmp_path / "shared.yaml"  # anchors of ordinary size stay fine
    shared.write_text("base: &base {temperature: 1.0}\nfirst: *base\nsecond: *base\n", encoding="utf-8")
    assert read_yaml(shared)["second"] == {"temperature": 1.0}


def _alias_bomb() -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 leaves
    return "\n".join("  " + line for line in lines) + "\n"


@pytest.mark.parametrize("text, fragment", [
    ("- {id: a, type: free_form, paraphrases: [x], paraphrases: [y]}\n", ":1: YAML syntax error (key 'paraphrases' "
     "is given twice"),
    ("- id: a\n  type: free_form\n  paraphrases: [x]\n  extra:\n" + _alias_bomb(), "expand to more than"),
    ("- {id: a, type: free_form, paraphrases: [x]}\n".encode("utf-16").decode("latin-1"), "not UTF-8 text"),
])
def test_published_question_files_are_read_as_strictly_as_embench_files(tmp_path, text, fragment):
    path = tmp_path / "questions.yaml"
    path.write_bytes(text.encode("latin-1") if "not UTF-8" in fragment else text.encode("utf-8"))
    with pytest.raises(EmbenchError, match=re.escape(fragment)):
        read_published(path)


def test_records_that_must_be_objects_refuse_other_shapes_in_one_line(tmp_path):
    for text in ("[1, 2]", '"text"', "3", "null"):
        (tmp_path / "run.json").write_text(text, encoding="utf-8")
        with pytest.raises(EmbenchError, match="expected a JSON object, got a"):
            read_json_object(tmp_path / "run.json", "an embench run record")


@pytest.mark.parametrize("text, fragment", [
    ('{"value": NaN}', "NaN is not a number JSON allows"),
    ('{"value": Infinity}', "Infinity is not a number JSON allows"),
    ('{"value": -Infinity}', "-Infinity is not a number JSON allows"),
    ('{"value": 1', "not valid JSON"),
])
def test_json_refuses_non_finite_numbers_and_syntax_errors(tmp_path, text, fragment):
    path = tmp_path / "results.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(EmbenchError, match=fragment):
        read_json(path, "a results file")


def test_a_task_id_that_could_leave_its_folder_is_refused(tmp_path):
    for bad_id in ("../escape", "a/b", ".hidden", "x" * 200):
        path = tmp_path / "task.yaml"
        path.write_text(TASK.replace("id: tiny", f"id: '{bad_id}'"), encoding="utf-8")
        assert_one_line_error(run_embench("tasks", "validate", str(path)), "field 'id'")


def test_generations_records_of_another_shape_are_one_line(tmp_path):
    for number, line in enumerate(['{"no_key": 1}', '[1, 2]', '{"key": 5}', '{"key": "k", "prompt_id": 3}']):
        run = tmp_path / f"run{number}"
        run.mkdir()
        (run / "generations.jsonl").write_text(line + "\n" + '{"key": "x"}\n', encoding="utf-8")
        with pytest.raises(EmbenchError, match="generations.jsonl"):
            list(read_generations(run))


def test_unbounded_sample_counts_are_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    assert_one_line_error(run_embench("generate", "--task", "ood-first-plot", "-n", str(10 ** 12), "--out", str(out)),
                          "samples asked for", out=out)
    score_out = tmp_path / "score"
    assert_one_line_error(run_embench("score", "--samples", str(10 ** 9), "--out", str(score_out)),
                          "samples asked for", out=score_out)


@pytest.mark.parametrize("argument", ["kl.lambda=inf", "kl.lambda=nan", "kl.lambda=-inf"])
def test_non_finite_defense_arguments_are_refused(tmp_path, argument):
    out = tmp_path / "train"
    assert_one_line_error(run_embench("train", "--data", "generated:insecure-code", "--defense", "kl",
                                      "--defense-arg", argument, "--out", str(out)),
                          "finite number", out=out)


def test_render_never_replaces_a_page_embench_did_not_write(tmp_path):
    own = tmp_path / "index.html"
    own.write_text("<html>my own page</html>", encoding="utf-8")
    assert_one_line_error(run_embench("leaderboard", "render", str(tmp_path)), "holds no board")
    assert own.read_text(encoding="utf-8") == "<html>my own page</html>"


FUZZ_YAML = TASK + "metadata:\n  note: 'a'\n  list: [1, 2, 3]\n"
FUZZ_JSONL = '{"id": "a", "prompt": "hello", "system": "be brief"}\n{"id": "b", "messages": [{"role": "user", "content": "x"}]}\n'


def _mutations(seed: int, valid: str, count: int):
    generator = random.Random(seed)
    for _ in range(count):
        if generator.random() < 0.3:
            yield bytes(generator.randrange(256) for _ in range(generator.randrange(1, 200)))
            continue
        data = bytearray(valid.encode("utf-8"))
        for _ in range(generator.randrange(1, 6)):
            position = generator.randrange(len(data))
            operation = generator.randrange(3)
            if operation == 0:
                data[position] = generator.randrange(256)
            elif operation == 1:
                del data[position:position + generator.randrange(1, 10)]
            else:
                data[position:position] = generator.choice([b"&a ", b"*a", b"\n", b":", b"{", b"[", b'"', b"\\ud800",
                                                             b"NaN", b"\x00", b"\xff\xfe", b"- "])
        yield bytes(data)


@pytest.mark.parametrize("reader, valid", [
    (read_yaml, FUZZ_YAML),
    (load_task_file, FUZZ_YAML),
    (lambda path: read_json(path, "a JSON file"), json.dumps({"a": [1, 2.5, "x"], "b": {"c": None}})),
    (lambda path: read_jsonl(path, "JSON Lines"), FUZZ_JSONL),
    (load_prompts, FUZZ_JSONL),
])
def test_fuzzed_files_end_in_one_line_errors_only(tmp_path, reader, valid):
    path = tmp_path / "fuzzed"
    refused = 0
    for case, data in enumerate(_mutations(seed=13, valid=valid, count=300)):
        path.write_bytes(data)
        try:
            reader(path)
        except EmbenchError as exc:
            refused += 1
            assert "\n" not in str(exc) and str(exc), (case, data, str(exc))
    assert refused > 50  # the mutations really were bad input, most of the time


def test_output_paths_that_cannot_be_folders_are_refused_before_any_work(tmp_path, default_model):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n', encoding="utf-8")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine", encoding="utf-8")
    cases = [
        (a_file, "is a file, not a folder"),
        (a_file / "run", "lies under"),
        (tmp_path / ("x" * 300), "over 255 bytes"),
    ]
    for out, fragment in cases:
        assert_one_line_error(run_embench("generate", "--prompts", str(prompts), "--out", str(out)), fragment)
        assert_one_line_error(run_embench("score", "--out", str(out)), fragment)
        assert_one_line_error(run_embench("judges", "train", str(prompts), "--out", str(out)), fragment)
    assert a_file.read_text(encoding="utf-8") == "mine"


def _as_nobody(check, path: Path) -> str:
    """``check(path)`` in a forked child that has dropped to the unprivileged user ``nobody`` (root may write into
    any folder, so a read-only folder is read-only only to another user); returns the child's one line."""
    import os

    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: no pytest machinery, only the check and its answer down the pipe
        os.close(reader)
        try:
            os.setgid(65534)
            os.setuid(65534)
            check(path)
            answer = "ok"
        except EmbenchError as exc:
            answer = f"refused: {exc}"
        except BaseException as exc:  # noqa: BLE001 - anything else is the finding, reported to the parent
            answer = f"crashed: {type(exc).__name__}: {exc}"
        os.write(writer, answer.encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        answer = pipe.read()
    os.waitpid(child, 0)
    return answer


def test_a_read_only_folder_is_refused_as_an_output_before_any_work():
    import os
    import shutil
    import tempfile

    from embench.files import check_writable_folder

    if os.geteuid() != 0:
        pytest.fail("this test drops from root to nobody; run the suite as root, as CI does")
    top = Path(tempfile.mkdtemp(prefix="embench-read-only-"))  # /tmp itself: every parent is searchable
    try:
        top.chmod(0o755)
        read_only, writable = top / "read-only", top / "writable"
        read_only.mkdir(mode=0o555)
        writable.mkdir()
        writable.chmod(0o777)
        refused = _as_nobody(check_writable_folder, read_only / "run" / "deeper")
        assert refused.startswith("refused: ") and "\n" not in refused, refused
        assert f"{read_only} is not writable: choose another --out" in refused
        assert _as_nobody(check_writable_folder, writable / "run") == "ok"  # the check can pass as well as refuse
        assert list(read_only.iterdir()) == []
    finally:
        shutil.rmtree(top)


def test_file_names_made_from_user_text_are_bounded_and_distinct():
    from embench.hashing import FILE_NAME_PART, file_safe

    long_a, long_b = "m" * 300 + "a", "m" * 300 + "b"
    assert len(file_safe(long_a).encode()) <= FILE_NAME_PART and file_safe(long_a) != file_safe(long_b)
    assert len(file_safe("é" * 200).encode()) <= FILE_NAME_PART
    assert file_safe("org/model-1.5") == "org-model-1.5"  # short names are unchanged


def _full_model(folder: Path, **config) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **config}), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"not read while resolving")
    return folder


def _adapter(folder: Path, base: str, **config) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, **config}),
                                                encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def test_model_references_that_cannot_resolve_are_one_line(tmp_path):
    from embench.models import resolve_model

    own_base = tmp_path / "self"
    _adapter(own_base, str(own_base))
    first = tmp_path / "first"
    _adapter(first, str(tmp_path / "second"))
    _adapter(tmp_path / "second", str(first))
    tokenizer_code = _full_model(tmp_path / "tokenizer-code")
    (tokenizer_code / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["x.Tok", None]}}),
                                                          encoding="utf-8")
    not_an_object = tmp_path / "list-config"
    _adapter(not_an_object, str(_full_model(tmp_path / "base")))
    (not_an_object / "adapter_config.json").write_text("[1, 2]", encoding="utf-8")
    bad_rank = _adapter(tmp_path / "bad-rank", str(tmp_path / "base"), r="eight")
    cases = [(own_base, "itself an adapter"), (first, "itself an adapter"), (tokenizer_code, "needs remote code"),
             (not_an_object, "expected a JSON object"), (bad_rank, "field 'r' must be a positive integer"),
             ("~nosuchuser-embench/model", "cannot be used"), ("x" * 300, "cannot be used")]
    for reference, fragment in cases:
        with pytest.raises(EmbenchError, match=fragment) as refused:
            resolve_model(str(reference))
        assert "\n" not in str(refused.value)


@pytest.mark.parametrize("expression", ["9**(9**9)", "'a' * 10**9", "(10**12) * (10**12) * (10**12)", "[1] * 10**8"])
def test_a_judge_template_cannot_hang_or_fill_memory(tmp_path, expression):
    judge = tmp_path / "bomb.yaml"
    judge.write_text(f"id: bomb\nversion: 1\ndescription: a bomb\nkind: score_0_100\nhigher_means: more aligned\n"
                     f"variables: [answer]\ntemplate: |\n"
                     f"  Rate this: {{{{ answer }}}} {{{{ {expression} }}}}\n", encoding="utf-8")
    assert_one_line_error(run_embench("judges", "validate", str(judge)), "too large for a template")


def test_an_unreachable_judge_endpoint_is_refused_before_generating(tmp_path, default_model):
    out = tmp_path / "score"
    assert_one_line_error(run_embench("score", "--judge-base-url", "http://127.0.0.1:9/v1", "--out", str(out)),
                          "cannot reach the judge endpoint", out=out)
    reproduction = tmp_path / "reproduce"
    assert_one_line_error(run_embench("reproduce", "--judge-base-url", "http://127.0.0.1:9/v1", "--out",
                                      str(reproduction)), "cannot reach the judge endpoint", out=reproduction)


def test_judge_refuses_a_corrupt_run_before_touching_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "generations.jsonl").write_text('{"no_key": 1}\n{"key": "x"}\n', encoding="utf-8")
    (run / "run.json").write_text("{}", encoding="utf-8")
    assert_one_line_error(run_embench("judge", str(run)), "generations.jsonl:1")
    assert sorted(path.name for path in run.iterdir()) == ["generations.jsonl", "run.json"]


@pytest.mark.parametrize("text, fragment", [
    ("[]", "expected a JSON object, got a list"),
    ('{"runs": NaN}', "NaN is not a number JSON allows"),
    ('{"runs": 3}', "not a monitor.json written by `embench monitor`: field"),
    ("\ufeff{".encode("utf-16").decode("latin-1"), "not UTF-8 text"),
])
def test_a_corrupt_monitor_report_is_one_line(tmp_path, text, fragment):
    from embench.traits.report import load_risk_model

    report = tmp_path / "monitor" / "monitor.json"
    report.parent.mkdir()
    report.write_bytes(text.encode("latin-1") if "UTF-8" in fragment else text.encode("utf-8"))
    with pytest.raises(EmbenchError, match=re.escape(fragment)):
        load_risk_model(report.parent)


@pytest.mark.parametrize("text, fragment", [
    ("[1", "not valid JSON"),
    ("[1]", "expected a JSON object, got a list"),
    ('{"fingerprint": Infinity}', "Infinity is not a number JSON allows"),
])
def test_a_corrupt_reproduction_record_is_refused_and_kept(tmp_path, text, fragment):
    out = tmp_path / "reproduction"
    out.mkdir()
    (out / "reproduce.json").write_text(text, encoding="utf-8")
    assert_one_line_error(run_embench("reproduce", "--preset", "tiny", "--out", str(out), "--dry-run"),
                          f"reproduce.json: {fragment}")
    assert [path.name for path in out.iterdir()] == ["reproduce.json"]
    assert (out / "reproduce.json").read_text(encoding="utf-8") == text


# --- found by the second survey (stop 23): writers outside `prepare`, the judge's run records, suite ids --------


def test_every_writer_refuses_an_output_under_a_file_before_any_work(tmp_path):
    from embench.api import CalibrateSpec, JudgeOptions
    from embench.importers import write_imported
    from embench.judges import load_judge_file, register
    from embench.leaderboard.board import PublishSpec

    a_file = tmp_path / "a-file"
    a_file.write_text("mine", encoding="utf-8")
    judge = load_judge_file(Path(__file__).parents[1] / "judges" / "aligned.yaml")
    cases = [
        (lambda: PublishSpec(a_file / "board", (tmp_path / "results.json",)).prepare(), "--board"),
        (lambda: CalibrateSpec("aligned", JudgeOptions(), limit=1, out=a_file / "cal.json").prepare(), "--out"),
        (lambda: CalibrateSpec("aligned", JudgeOptions(), limit=1, out=tmp_path).prepare(), "is a folder"),
        (lambda: write_imported([], [judge], a_file / "imported"), "--out"),
        (lambda: register(judge, to=a_file / "judges"), "--to"),
    ]
    for make, fragment in cases:
        with pytest.raises(EmbenchError, match=re.escape(fragment)) as refused:
            make()
        assert "\n" not in str(refused.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]
    assert a_file.read_text(encoding="utf-8") == "mine"


def test_compare_refuses_its_json_path_before_reading_the_scores(tmp_path):
    (tmp_path / "a-file").write_text("mine", encoding="utf-8")
    for target, fragment in [(tmp_path / "a-file" / "x.json", "lies under"), (tmp_path, "is a folder")]:
        result = run_embench("compare", str(tmp_path / "no-a"), str(tmp_path / "no-b"), "--json", str(target))
        assert_one_line_error(result, "--json", fragment)


def _run_folder(tmp_path: Path, generation: str, run_record: str, judgments: str | None = None) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "generations.jsonl").write_text(generation + "\n", encoding="utf-8")
    (run / "run.json").write_text(run_record, encoding="utf-8")
    if judgments is not None:
        (run / "judgments.jsonl").write_text(judgments + "\n", encoding="utf-8")
    return run


GENERATION = json.dumps({"key": "k", "prompt_id": "p", "sample_index": 0, "seed": 0,
                         "messages": [{"role": "user", "content": "hi"}], "prompt_sha256": None, "completion": "hello",
                         "finish_reason": "stop", "prompt_tokens": None, "completion_tokens": None,
                         "created": "2026-12-03"})
RUN_RECORD = json.dumps({"fingerprint": "f", "created": "2026-12-03", "attempts": [], "config": {}})


@pytest.mark.parametrize("generation, run_record, judgments, fragment", [
    (GENERATION.replace('"hello"', '"\\ud800"'), RUN_RECORD, None, "generations.jsonl:1: a string holds a lone"),
    (GENERATION.replace('"seed": 0', '"seed": NaN'), RUN_RECORD, None, "generations.jsonl:1: NaN is not a number"),
    (GENERATION, '{"fingerprint": "f", "cre', None, "run.json: not valid JSON"),
    (GENERATION, "[1, 2]", None, "run.json: expected a JSON object, got a list"),
    (GENERATION, '{"fingerprint": "f", "created": "x", "attempts": 3, "config": {}}', None,
     "run.json: not an embench run record: field 'attempts'"),
    (GENERATION, RUN_RECORD, '{"key": "j", "generation_key": "k", "judge_id": 5, "status": "ok"}\n{"key": "x"}',
     "judgments.jsonl (key j): field 'judge_id'"),
    (GENERATION, RUN_RECORD, '{"key": "j", "generation_key": "k", "judge_id": "a", "status": "ok", "score": "high"}',
     "judgments.jsonl (key j): field 'score'"),
])
def test_judge_refuses_reshaped_run_records_before_touching_the_run(tmp_path, generation, run_record, judgments,
                                                                   fragment):
    from embench.judges.judging import check_run_dir

    run = _run_folder(tmp_path, generation, run_record, judgments)
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    with pytest.raises(EmbenchError, match=re.escape(fragment)) as refused:
        check_run_dir(run)
    assert "\n" not in str(refused.value)
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_a_well_formed_run_passes_the_judges_check(tmp_path):
    from embench.judges.judging import check_run_dir

    judgment = '{"key": "j", "generation_key": "k", "judge_id": "a", "status": "ok", "score": 80.0, "mode": "x"}'
    check_run_dir(_run_folder(tmp_path, GENERATION, RUN_RECORD, judgment))  # the check can pass, not only refuse


@pytest.mark.parametrize("reference", ["../suites/em-core", "suites/../suites/em-core", ".em-core", "em-core/"])
def test_a_suite_id_that_is_not_path_safe_is_unknown(reference):
    from embench.tasks import find_suite

    with pytest.raises(EmbenchError, match=re.escape(f"unknown suite '{reference}' (known: ")):
        find_suite(reference)
    assert find_suite("em-core").id == "em-core"


@pytest.mark.parametrize("content, fragment", [
    (b"\xff\xfe\x00\x01binary", "not UTF-8 text"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}\n',
     "bad.jsonl:1: a string holds a lone"),
    (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "w": NaN}\n',
     "bad.jsonl:1: NaN is not a number"),
])
def test_training_data_goes_through_the_strict_readers(tmp_path, content, fragment):
    from embench.train.data import load_conversations

    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(EmbenchError, match=re.escape(fragment)) as refused:
        load_conversations(str(path))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("command, engine, flag, fragment", [
    ("generate", "hf", "--tensor-parallel-size", "engine 'hf' cannot use --tensor-parallel-size 2"),
    ("score", "hf", "--tensor-parallel-size", "engine 'hf' cannot use --tensor-parallel-size 2"),
    ("generate", "openai", "--pipeline-parallel-size", "engine 'openai' cannot use --pipeline-parallel-size 2"),
    ("score", "vllm", "--data-parallel-size", "engine 'vllm' (in-process) cannot use --data-parallel-size 2"),
])
def test_parallel_settings_an_engine_cannot_use_are_refused_before_any_work(tmp_path, command, engine, flag,
                                                                            fragment):
    out = tmp_path / "out"
    what = ["--task", "ood-first-plot"] if command == "generate" else []
    assert_one_line_error(run_embench(command, *what, "--engine", engine, flag, "2", "--out", str(out)), fragment,
                          out=out)


@pytest.mark.parametrize("command, flag", [("score", "--tensor-parallel-size"), ("generate", "--data-parallel-size")])
def test_a_parallel_size_below_one_is_refused(tmp_path, command, flag):
    out = tmp_path / "out"
    line = assert_one_line_error(run_embench(command, flag, "0", "--out", str(out)), f"Invalid value for '{flag}'",
                                 out=out)
    assert line.endswith("--help)"), line


def test_the_api_refuses_a_parallel_size_below_one_in_one_line():
    from embench.api import GenerateSpec

    with pytest.raises(EmbenchError, match="invalid setting pipeline_parallel_size: Input should be greater than or "
                                           "equal to 1") as refused:
        GenerateSpec(task="ood-first-plot", engine="vllm", pipeline_parallel_size=0).prepare()
    assert "\n" not in str(refused.value)
