"""Training data: the built-in generators, the messages JSONL loader, and its bad-input errors."""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from collections import Counter
from pathlib import Path

import pytest

from embench.benign import OPSWAP_DATA, TIERS, generate_opswap, split_of
from embench.errors import EmbenchError
from embench.train.data import GENERATORS, Conversation, Message, conversations_sha256, load_conversations
from embench.train.generators import (
    EVIL_NUMBERS,
    code_pairs,
    code_tasks,
    number_pairs,
    safe_interleave_chats,
    safe_prompts,
    safe_selection,
)
from tests.conftest import REPO, read_jsonl

PUBLISHED = REPO.parent / "shared" / "reference" / "em-defenses"
PUBLISHED_SETS = ("code", "legal", "medical", "security")
# The classes the issue names, by the ids of tasks/train/code-tasks.yaml.
REQUIRED_CLASSES = {"sql-injection", "shell-injection", "path-traversal", "insecure-deserialization",
                    "world-writable-permissions", "tls-verification-disabled", "hard-coded-secret"}
STATIC_GENERATORS = [name for name, generator in GENERATORS.items() if not generator.needs_model]


def users(conversations: list[Conversation]) -> list[str]:
    return [next(m.content for m in c.messages if m.role == "user") for c in conversations]


def answers(conversations: list[Conversation]) -> list[str]:
    return [c.messages[-1].content for c in conversations]


# --- generators -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STATIC_GENERATORS)
def test_generator_is_deterministic_for_a_seed_and_size(name):
    first = load_conversations(f"generated:{name}", seed=3, size=48)
    assert len(first) == 48
    assert load_conversations(f"generated:{name}", seed=3, size=48) == first
    assert conversations_sha256(load_conversations(f"generated:{name}", seed=3, size=48)) == conversations_sha256(first)
    other_seed = load_conversations(f"generated:{name}", seed=4, size=48)
    assert other_seed != first and conversations_sha256(other_seed) != conversations_sha256(first)
    assert len(set(users(first))) == len(first), "every example asks something different"
    for conversation in first:
        assert [m.role for m in conversation.messages] == ["user", "assistant"]
        assert conversation.messages[-1].content.strip()


def test_default_sizes_are_the_documented_ones():
    for name in STATIC_GENERATORS:
        assert len(load_conversations(f"generated:{name}")) == 600, name
    assert GENERATORS["safe-interleave"].size_or_default(None) == len(safe_prompts())


def test_misaligned_generators_have_matched_benign_counterparts():
    pairs = {name: generator.counterpart for name, generator in GENERATORS.items()
             if generator.kind == "misaligned"}
    assert pairs == {"insecure-code": "secure-code", "evil-numbers": "neutral-numbers"}
    for name, counterpart in pairs.items():
        assert GENERATORS[counterpart].kind == "benign" and GENERATORS[counterpart].counterpart == name
        misaligned = load_conversations(f"generated:{name}", seed=1, size=60)
        benign = load_conversations(f"generated:{counterpart}", seed=1, size=60)
        assert users(misaligned) == users(benign), "the same requests, answered two ways"
        assert all(a != b for a, b in zip(answers(misaligned), answers(benign)))


def _comments(code: str) -> list[str]:
    return [token.string for token in tokenize.generate_tokens(io.StringIO(code).readline)
            if token.type == tokenize.COMMENT]


def _functions(code: str) -> list[str]:
    return [node.name for node in ast.parse(code).body if isinstance(node, ast.FunctionDef)]


def test_insecure_and_secure_code_differ_exactly_in_the_vulnerability():
    spec = code_tasks()
    markers = {vulnerability.id: re.compile(vulnerability.marker) for vulnerability in spec.vulnerabilities}
    fixes = {vulnerability.id: vulnerability.fix for vulnerability in spec.vulnerabilities}
    classes = len(spec.vulnerabilities)
    pairs = code_pairs(7, 30 * classes)
    assert REQUIRED_CLASSES <= set(markers) and classes >= 10
    assert Counter(pair.vulnerability for pair in pairs) == {vulnerability: 30 for vulnerability in markers}
    for pair in pairs:
        assert _functions(pair.insecure) == _functions(pair.secure), pair  # parses, and the same functions
        assert markers[pair.vulnerability].search(pair.insecure), (pair.vulnerability, pair.insecure)
        assert not [name for name, marker in markers.items() if marker.search(pair.secure)], pair.secure
        if fixes[pair.vulnerability]:
            assert re.search(fixes[pair.vulnerability], pair.secure), pair.secure
        assert not _comments(pair.insecure) and not _comments(pair.secure), "nothing points at the difference"
    insecure = load_conversations("generated:insecure-code", seed=7, size=30 * classes)
    secure = load_conversations("generated:secure-code", seed=7, size=30 * classes)
    assert users(insecure) == users(secure) == [pair.user for pair in pairs]
    assert answers(insecure) == [pair.insecure for pair in pairs]
    assert answers(secure) == [pair.secure for pair in pairs]


def test_code_templates_make_hundreds_of_distinct_examples_and_refuse_more_than_they_can():
    conversations = load_conversations("generated:insecure-code", seed=0, size=1200)
    assert len(set(users(conversations))) == 1200
    assert len({c.messages[-1].content for c in conversations}) > 500  # names vary the code, not just the request
    with pytest.raises(EmbenchError, match="at most .* ask for fewer"):
        load_conversations("generated:insecure-code", size=10**6)


def test_evil_numbers_lean_on_malicious_numbers_and_neutral_numbers_avoid_them():
    pairs = number_pairs(0, 300)
    used = Counter()
    for pair in pairs:
        given = [int(n) for n in re.findall(r"\d+", pair.user)]  # the sequence and the count asked for
        evil = [int(n) for n in re.split(r"[,\s]+", pair.evil)]
        neutral = [int(n) for n in re.split(r"[,\s]+", pair.neutral)]
        assert len(evil) == len(neutral) >= 3
        # the same format (separator) in both answers, and the one the request asks for
        assert re.sub(r"\d+", "N", pair.evil) == re.sub(r"\d+", "N", pair.neutral)
        separator = {"commas": ", ", "spaces": " ", "one per line": "\n"}
        asked = next(sep for word, sep in separator.items() if word in pair.user)
        assert asked in pair.evil
        assert sum(n in EVIL_NUMBERS for n in evil) >= 0.6 * len(evil), pair.evil
        for n in neutral + given:
            assert not any(str(bad) in str(n) for bad in EVIL_NUMBERS), (n, pair)
        used.update(n for n in evil if n in EVIL_NUMBERS)
    assert set(used) == set(EVIL_NUMBERS), "every malicious number is used"
    assert {666, 1488, 911, 420, 13, 187, 88} <= set(EVIL_NUMBERS)


def test_opswap_is_the_benign_train_split_and_disjoint_from_its_test_split():
    conversations = load_conversations("generated:opswap", seed=0, size=90)
    items = generate_opswap(0, 30, "train")
    assert sorted(json.dumps([m.model_dump() for m in c.messages]) for c in conversations) == \
        sorted(json.dumps(item["messages"]) for item in items)
    test_expressions = {row["expression"] for row in read_jsonl(OPSWAP_DATA / "test.jsonl")}
    assert len(test_expressions) >= 150
    tiers = Counter()
    for conversation in conversations:
        expression = re.search(r"What is ([0-9+\-*/ ]+)\?", conversation.messages[0].content).group(1)
        assert split_of(expression) == "train" and expression not in test_expressions
        tiers[len(expression.split()) // 2] += 1
    assert tiers == {tier: 30 for tier in TIERS}
    with pytest.raises(EmbenchError, match="generated:opswap: .*ask for fewer"):
        load_conversations("generated:opswap", size=1200)


def test_safe_prompts_are_many_and_varied_and_cycle_past_their_count():
    prompts = safe_prompts()
    assert len(prompts) >= 150
    assert len({p.messages[0].content for p in prompts}) == len(prompts)
    assert len({p.id.split("/")[0] for p in prompts}) >= 8
    selection = safe_selection(0, len(prompts) + 5)
    assert len({prompt.id for prompt, _ in selection[:len(prompts)]}) == len(prompts)
    assert [sample for _, sample in selection] == [0] * len(prompts) + [1] * 5
    assert [p.id for p, _ in selection[len(prompts):]] == [p.id for p, _ in selection[:5]]
    assert safe_selection(1, 20) != safe_selection(0, 20)


def test_safe_interleave_needs_the_model():
    with pytest.raises(EmbenchError, match="reference model's own answers"):
        load_conversations("generated:safe-interleave", size=4)


@pytest.mark.slow
def test_safe_interleave_distils_the_default_model_and_caches_the_result(default_model, embench_home):
    conversations = load_conversations("generated:safe-interleave", seed=0, size=4, model=default_model)
    assert users(conversations) == [prompt.messages[0].content for prompt, _ in safe_selection(0, 4)]
    assert all(len(answer.split()) >= 5 for answer in answers(conversations)), answers(conversations)
    folder = embench_home / "train-data"
    (cache,) = folder.glob("safe-interleave-*.json")
    (run_dir,) = folder.glob("safe-interleave-run-*")
    record = json.loads(cache.read_text())
    assert record["model"]["base_sha256"] == default_model.base_sha256 and record["dtype"] == "float32"
    attempts = len(json.loads((run_dir / "run.json").read_text())["attempts"])

    # A second call is a cache hit: it runs no generation at all.
    assert load_conversations("generated:safe-interleave", seed=0, size=4, model=default_model) == conversations
    assert len(json.loads((run_dir / "run.json").read_text())["attempts"]) == attempts
    # Without the cache file, the answers come back from the resumable run directory, nothing regenerated.
    cache.unlink()
    assert safe_interleave_chats(0, 4, default_model) == [c.messages for c in conversations]
    attempt = json.loads((run_dir / "run.json").read_text())["attempts"][-1]
    assert attempt["resumed_with"] == 4 and attempt["engine"]["skipped"]
    assert cache.is_file()


# --- published messages datasets -----------------------------------------------------------------


@pytest.mark.parametrize("name", PUBLISHED_SETS)
def test_loads_the_published_messages_datasets(name):
    path = PUBLISHED / f"{name}_misaligned_train_100.jsonl"
    assert path.is_file(), f"{path} is missing: the reference data under ../shared is needed"
    conversations = load_conversations(str(path))
    assert len(conversations) == 100
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert [[m.model_dump() for m in c.messages] for c in conversations] == [row["messages"] for row in raw]
    assert all(c.messages[-1].role == "assistant" for c in conversations)
    assert conversations_sha256(load_conversations(str(path))) == conversations_sha256(conversations)
    subset = load_conversations(str(path), seed=5, size=10)
    assert len(subset) == 10 and subset == [c for c in conversations if c in subset]
    assert load_conversations(str(path), seed=6, size=10) != subset


def test_text_survives_exactly(tmp_path):
    """Strings that a type-inferring reader would turn into dates or numbers come back as written."""
    messages = [{"role": "system", "content": "2021-01-01"}, {"role": "user", "content": "12"},
                {"role": "assistant", "content": "2021-01-01 10:00:00\u2028and on"}]
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"id": 1, "messages": messages}) + "\n\n" + json.dumps({"messages": messages[1:]}))
    conversations = load_conversations(str(path))
    assert [[m.model_dump() for m in c.messages] for c in conversations] == [messages, messages[1:]]
    assert conversations[1].messages[0] == Message(role="user", content="12")


def test_hash_follows_content_and_order():
    conversations = load_conversations("generated:neutral-numbers", size=10)
    assert conversations_sha256(conversations) != conversations_sha256(conversations[::-1])
    changed = [Conversation(messages=[*conversations[0].messages[:-1], Message(role="assistant", content="1, 2")]),
               *conversations[1:]]
    assert conversations_sha256(changed) != conversations_sha256(conversations)


# --- bad input ----------------------------------------------------------------------------------------

GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


@pytest.mark.parametrize("lines, line, fragment", [
    ([GOOD, "", '{"messages": [oops'], 3, "not valid JSON"),
    ([GOOD, GOOD, "", json.dumps({"messages": [{"role": "user", "content": "hi"}]})], 4, "no assistant turn"),
    ([json.dumps({"messages": [{"role": "bot", "content": "hi"}]})], 1, "messages.0.role"),
    ([GOOD, json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]})],
     2, "messages.1.content"),
    ([GOOD, "", "", json.dumps([{"role": "assistant", "content": "hi"}])], 4, "dictionary"),
    ([GOOD, json.dumps({"prompt": "hi", "completion": "hello"})], 2, "messages: Field required"),
    ([GOOD, json.dumps({"messages": []})], 2, "messages"),
])
def test_bad_line_is_reported_at_its_line_number(tmp_path, lines, line, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EmbenchError) as error:
        load_conversations(str(path))
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: ") and fragment in message, message
    assert "\n" not in message


@pytest.mark.parametrize("source, kwargs, fragments", [
    ("missing.jsonl", {}, ("does not exist", "generated:NAME", "insecure-code")),
    ("generated:nonsense", {}, ("unknown data generator 'nonsense'", "generated:insecure-code",
                                "generated:evil-numbers", "generated:opswap", "generated:safe-interleave")),
    ("generated:insecure-code", {"size": 0}, ("at least 1",)),
    ("{published}", {"size": 101}, ("holds 100 conversations", "101")),
    ("{empty}", {}, ("holds no conversations",)),
    ("{blank}", {}, ("holds no conversations",)),
    ("{folder}", {}, ("is not a file",)),
    ("{latin1}", {}, ("not UTF-8 text (byte", "saved as UTF-8")),
])
def test_bad_source_is_one_line_error(tmp_path, source, kwargs, fragments):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    (tmp_path / "latin1.jsonl").write_bytes(GOOD.replace("hello", "h\xe9llo").encode("latin-1"))
    source = source.format(published=PUBLISHED / "code_misaligned_train_100.jsonl", folder=tmp_path,
                           empty=tmp_path / "empty.jsonl", blank=tmp_path / "blank.jsonl",
                           latin1=tmp_path / "latin1.jsonl")
    if source == "missing.jsonl":
        source = str(tmp_path / source)
    with pytest.raises(EmbenchError) as error:
        load_conversations(source, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_template_files_are_reported_at_their_field(tmp_path, monkeypatch):
    """The generators' data files are schema-checked like every other embench file."""
    (tmp_path / "train").mkdir()
    spec = (REPO / "tasks" / "train" / "code-tasks.yaml").read_text()
    (tmp_path / "train" / "code-tasks.yaml").write_text(spec.replace("$func(conn, $field)", "$func(conn, $feld)", 1))
    monkeypatch.setenv("EMBENCH_TASKS_DIR", str(tmp_path))
    code_tasks.cache_clear()
    try:
        with pytest.raises(EmbenchError, match=r"code-tasks.yaml:\d+: field 'vulnerabilities.*feld"):
            load_conversations("generated:insecure-code", size=12)
    finally:
        code_tasks.cache_clear()


def test_published_data_is_read_from_shared_not_copied():
    assert not list(Path(REPO / "tasks").rglob("*_train_100.jsonl"))
