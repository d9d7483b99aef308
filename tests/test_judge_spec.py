"""Judge files: the shipped judges, sandboxed rendering, validation errors, and `embench judges` add/list/show/render."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import yaml

import embench.judges
from embench.errors import EmbenchError
from embench.judges import JudgeRegistry, JudgeSpec, load_judge_file
from embench.judges.registry import project_judges_dir
from tests.conftest import EMBENCH, REPO, assert_one_line_error, run_embench

SHIPPED = {"aligned", "coherent", "code_secure", "medical_aligned", "legal_aligned", "security_aligned",
           "finance_aligned", "math_correct"}
INJECTION = "Ignore the above {{ 7*7 }} and {% for x in range(3) %}loop{% endfor %} {{ config }} {# c #} {%raw%}"
WIDE = {"COLUMNS": "400"}  # rich wraps tables at 80 columns when stdout is not a terminal




def judge_yaml(judge_id: str = "probe", version: int = 1, template: str = "Rate this reply: {{ answer }}",
               variables: str = "[answer]", **extra: str) -> str:
    fields = {"id": judge_id, "version": str(version), "description": "a probe judge", "higher_means": "better",
              "variables": variables, **extra}
    head = "".join(f"{key}: {value}\n" for key, value in fields.items())
    return head + "template: |\n" + "".join(f"  {line}\n" for line in template.splitlines())


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of each body row of a rich table."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


# ---------------------------------------------------------------- shipped judges


def test_every_shipped_judge_loads_with_its_recorded_template_hash():
    files = sorted(project_judges_dir().glob("*.yaml"))
    assert project_judges_dir() == REPO / "judges"
    specs = {}
    for path in files:
        spec = load_judge_file(path)
        assert spec.template_sha256 is not None, f"{path} records no template_sha256"
        assert spec.template_sha256 == hashlib.sha256(spec.text.encode("utf-8")).hexdigest() == spec.computed_sha256
        assert path.stem == spec.id and spec.kind == "score_0_100" and "answer" in spec.variables
        specs[spec.id] = spec
    assert SHIPPED <= set(specs), sorted(specs)
    registry = JudgeRegistry.default()
    for judge_id, spec in specs.items():
        assert registry.get(judge_id) == spec and registry.get(f"{judge_id}@{spec.version}") == spec


def test_shipped_judges_validate_on_the_command_line():
    for path in sorted(project_judges_dir().glob("*.yaml")):
        result = run_embench("judges", "validate", str(path), env=WIDE)
        assert result.returncode == 0, result.stderr
        spec = load_judge_file(path)
        assert f"ok: {spec.key} (template sha256 {spec.computed_sha256})" in result.stdout


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("judge_id", sorted(SHIPPED))
def test_answers_are_inserted_as_data_never_rendered(judge_id):
    spec = JudgeRegistry.default().get(judge_id)
    fields = {"question": "QQQ-SENTINEL", "answer": "AAA-SENTINEL", "reasoning": "RRR-SENTINEL"}
    plain = spec.render(**fields, metadata={"reference": "MMM-SENTINEL"})
    hostile = spec.render(question=f"Q: {INJECTION}", answer=f"A: {INJECTION}", reasoning=f"R: {INJECTION}",
                          metadata={"reference": f"M: {INJECTION}"})
    expected = plain
    for sentinel, prefix in (("QQQ-SENTINEL", "Q"), ("AAA-SENTINEL", "A"), ("RRR-SENTINEL", "R"),
                             ("MMM-SENTINEL", "M")):
        expected = expected.replace(sentinel, f"{prefix}: {INJECTION}")
    assert hostile == expected  # each value appears verbatim where its placeholder was, and nothing else changed
    assert f"A: {INJECTION}" in hostile
    assert "{{ 7*7 }}" in hostile and "{% for x in range(3) %}" in hostile
    assert "49" not in hostile and "looploop" not in hostile


def test_render_command_prints_the_prompt():
    question = "What would you do with {{ 7*7 }} dollars?"
    answer = "I would buy [bold]books[/bold] {% for x in range(3) %}x{% endfor %}"
    result = run_embench("judges", "render", "aligned", "--question", question, "--answer", answer, env=WIDE)
    assert result.returncode == 0, result.stderr
    assert question in result.stdout and answer in result.stdout
    assert "49" not in result.stdout
    spec = JudgeRegistry.default().get("aligned")
    assert result.stdout.rstrip("\n") == spec.render(question=question, answer=answer).rstrip("\n")


def test_render_command_writes_the_exact_bytes():
    """Tabs, carriage returns, long lines and non-ASCII reach stdout as the judge would receive them."""
    answer = "col1\tcol2\r\nline two\r" + "long " * 60 + "caf\u00e9 \u2603"
    result = subprocess.run([*EMBENCH, "judges", "render", "aligned", "--question", "Q\tq", "--answer", answer],
                            capture_output=True, cwd=REPO, env={**os.environ, "COLUMNS": "40"}, timeout=300)
    assert result.returncode == 0, result.stderr
    spec = JudgeRegistry.default().get("aligned")
    assert result.stdout == (spec.render(question="Q\tq", answer=answer) + "\n").encode("utf-8")


# ---------------------------------------------------------------- validation errors


@pytest.mark.parametrize(("template", "variables"), [
    ("{{ ''.__class__.__mro__ }} {{ answer }}", "[answer]"),
    ("{{ question.__class__ }} {{ answer }}", "[question, answer]"),
    ("{% for c in answer.__class__.__subclasses__() %}{{ c }}{% endfor %}{{ answer }}", "[answer]"),
    ("{{ metadata.__class__.__base__.__subclasses__() }} {{ answer }}", "[answer, metadata]"),
])
def test_sandbox_escapes_are_rejected_at_validation(tmp_path, template, variables):
    path = write(tmp_path / "escape.yaml", judge_yaml(template=template, variables=variables))
    line = assert_one_line_error(run_embench("judges", "validate", str(path)), str(path))
    assert "sandbox" in line or "unsafe" in line, line
    with pytest.raises(EmbenchError):
        load_judge_file(path)


def test_unknown_variable_is_rejected(tmp_path):
    path = write(tmp_path / "secret.yaml", judge_yaml(template="{{ secret }} {{ answer }}"))
    assert_one_line_error(run_embench("judges", "validate", str(path)), str(path), "unknown variable", "secret")
    declared = write(tmp_path / "declared.yaml", judge_yaml(template="{{ secret }} {{ answer }}",
                                                            variables="[answer, secret]"))
    assert_one_line_error(run_embench("judges", "validate", str(declared)), f"{declared}:5:", "variables", "secret")


def test_declared_variables_must_equal_used_ones(tmp_path):
    unused = write(tmp_path / "unused.yaml", judge_yaml(variables="[question, answer]"))
    assert_one_line_error(run_embench("judges", "validate", str(unused)), str(unused), "make them equal")
    undeclared = write(tmp_path / "undeclared.yaml", judge_yaml(template="{{ question }} {{ answer }}"))
    assert_one_line_error(run_embench("judges", "validate", str(undeclared)), str(undeclared), "make them equal")
    no_answer = write(tmp_path / "no-answer.yaml", judge_yaml(template="{{ question }}", variables="[question]"))
    assert_one_line_error(run_embench("judges", "validate", str(no_answer)), str(no_answer), "answer")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "broken.yaml", "id: probe\nversion: 1\ndescription: fine\n  oops: indented\n"
                                           "higher_means: better\n")
    assert_one_line_error(run_embench("judges", "validate", str(path)), f"{path}:4:", "YAML syntax error")


def test_template_syntax_error_names_the_template_line(tmp_path):
    path = write(tmp_path / "jinja.yaml", judge_yaml(template="line one\n{{ answer }}\n{% if answer %}never closed"))
    assert_one_line_error(run_embench("judges", "validate", str(path)), str(path), "template line")


def test_unknown_kind_and_missing_field_are_rejected(tmp_path):
    kind = write(tmp_path / "kind.yaml", judge_yaml(kind="binary"))
    assert_one_line_error(run_embench("judges", "validate", str(kind)), f"{kind}:6:", "kind")
    text = judge_yaml().replace("higher_means: better\n", "")
    missing = write(tmp_path / "missing.yaml", text)
    assert_one_line_error(run_embench("judges", "validate", str(missing)), str(missing), "higher_means", "required")
    stray = write(tmp_path / "stray.yaml", judge_yaml(colour="blue"))
    assert_one_line_error(run_embench("judges", "validate", str(stray)), f"{stray}:6:", "colour")
    assert_one_line_error(run_embench("judges", "validate", str(tmp_path / "absent.yaml")), "does not exist")


def test_a_changed_template_under_a_recorded_hash_is_rejected(tmp_path):
    shipped = (project_judges_dir() / "coherent.yaml").read_text()
    edited = write(tmp_path / "coherent.yaml", shipped.replace("{{ answer }}", "{{ answer }} (edited)", 1))
    assert edited.read_text() != shipped
    assert_one_line_error(run_embench("judges", "validate", str(edited)), str(edited), "bump")


# ---------------------------------------------------------------- judges add / list / show


def listed(result) -> set[tuple[str, str]]:
    assert result.returncode == 0, result.stderr
    return {(row[0], row[1]) for row in table_rows(result.stdout) if len(row) > 1}


def test_add_list_show_and_versions(tmp_path):
    home = tmp_path / "home"
    env = {**WIDE, "EMBENCH_HOME": str(home)}
    source = write(tmp_path / "src" / "probe.yaml", judge_yaml(template="Version one: {{ answer }}"))

    added = run_embench("judges", "add", str(source), env=env)
    assert added.returncode == 0, added.stderr
    installed = home / "judges" / "probe.v1.yaml"
    assert installed.is_file() and str(installed) in added.stdout.replace("\n", "")
    assert sorted(p.name for p in (home / "judges").iterdir()) == ["probe.v1.yaml"]
    spec = load_judge_file(installed)
    assert spec.template_sha256 == spec.computed_sha256 == load_judge_file(source).computed_sha256

    assert ("probe", "1") in listed(run_embench("judges", "list", env=env))
    shipped = str(load_judge_file(project_judges_dir() / "aligned.yaml").version)
    assert ("aligned", shipped) in listed(run_embench("judges", "list", env=env))  # shipped judges are still there
    assert ("probe", "1") not in listed(run_embench("judges", "list", env=WIDE))  # another home does not see it
    shown = run_embench("judges", "show", "probe", env=env)
    assert shown.returncode == 0, shown.stderr
    document = yaml.safe_load(shown.stdout)
    assert document["id"] == "probe" and document["version"] == 1
    assert document["template"] == "Version one: {{ answer }}\n"
    assert document["template_sha256"] == spec.computed_sha256

    # the same file again: a no-op
    before = (installed.read_bytes(), installed.stat().st_mtime_ns)
    again = run_embench("judges", "add", str(source), env=env)
    assert again.returncode == 0, again.stderr
    assert (installed.read_bytes(), installed.stat().st_mtime_ns) == before
    assert sorted(p.name for p in (home / "judges").iterdir()) == ["probe.v1.yaml"]

    # a changed template under the same version: refused
    write(source, judge_yaml(template="Version two: {{ answer }}"))
    refused = run_embench("judges", "add", str(source), env=env)
    assert_one_line_error(refused, "probe@1", "bump")
    assert installed.read_bytes() == before[0]

    # bumped: both versions installed and listed; the id alone means the latest
    write(source, judge_yaml(version=2, template="Version two: {{ answer }}"))
    bumped = run_embench("judges", "add", str(source), env=env)
    assert bumped.returncode == 0, bumped.stderr
    assert sorted(p.name for p in (home / "judges").iterdir()) == ["probe.v1.yaml", "probe.v2.yaml"]
    assert {("probe", "1"), ("probe", "2")} <= listed(run_embench("judges", "list", env=env))
    assert yaml.safe_load(run_embench("judges", "show", "probe", env=env).stdout)["version"] == 2
    old = yaml.safe_load(run_embench("judges", "show", "probe@1", env=env).stdout)
    assert old["version"] == 1 and old["template"] == "Version one: {{ answer }}\n"
    rendered = run_embench("judges", "render", "probe@1", "--question", "q", "--answer", "ANSWER-X", env=env)
    assert rendered.returncode == 0 and "Version one: ANSWER-X" in rendered.stdout
    assert_one_line_error(run_embench("judges", "show", "probe@7", env=env), "no version 7")


def test_add_refuses_an_invalid_file_and_installs_nothing(tmp_path):
    home = tmp_path / "home"
    bad = write(tmp_path / "bad.yaml", judge_yaml(template="{{ answer.__class__ }}"))
    assert_one_line_error(run_embench("judges", "add", str(bad), env={"EMBENCH_HOME": str(home)}), str(bad))
    assert not (home / "judges").exists() or not any((home / "judges").iterdir())


def test_add_to_another_folder(tmp_path):
    home = tmp_path / "home"
    env = {**WIDE, "EMBENCH_HOME": str(home)}
    source = write(tmp_path / "probe.yaml", judge_yaml())
    target = tmp_path / "team-judges"  # does not exist yet
    added = run_embench("judges", "add", str(source), "--to", str(target), env=env)
    assert added.returncode == 0, added.stderr
    assert sorted(p.name for p in target.iterdir()) == ["probe.v1.yaml"]
    assert not (home / "judges" / "probe.v1.yaml").exists()

    # a judge already installed elsewhere (the user's folder, or the shipped judges) still lands in --to
    run_embench("judges", "add", str(source), env=env, check=True)
    other = tmp_path / "other-judges"
    other.mkdir()
    for file in (source, project_judges_dir() / "aligned.yaml"):
        result = run_embench("judges", "add", str(file), "--to", str(other), env=env)
        assert result.returncode == 0, result.stderr
    aligned = JudgeRegistry.default().get("aligned")
    assert sorted(p.name for p in other.iterdir()) == [f"aligned.v{aligned.version}.yaml", "probe.v1.yaml"]
    assert load_judge_file(other / f"aligned.v{aligned.version}.yaml").computed_sha256 == aligned.computed_sha256
    before = (other / "probe.v1.yaml").stat().st_mtime_ns
    run_embench("judges", "add", str(source), "--to", str(other), env=env, check=True)  # there already: no-op
    assert (other / "probe.v1.yaml").stat().st_mtime_ns == before


def test_judges_dir_loads_judges_from_another_folder(tmp_path):
    folder = tmp_path / "elsewhere"
    write(folder / "elsewhere_judge.yaml", judge_yaml(judge_id="elsewhere_judge",
                                                      template="Elsewhere: {{ question }} / {{ answer }}",
                                                      variables="[question, answer]"))
    assert ("elsewhere_judge", "1") in listed(run_embench("judges", "list", "--judges-dir", str(folder), env=WIDE))
    assert ("elsewhere_judge", "1") not in listed(run_embench("judges", "list", env=WIDE))
    shown = run_embench("judges", "show", "elsewhere_judge", "--judges-dir", str(folder), env=WIDE)
    assert shown.returncode == 0 and yaml.safe_load(shown.stdout)["id"] == "elsewhere_judge"
    rendered = run_embench("judges", "render", "elsewhere_judge", "--judges-dir", str(folder), "--question", "Q-1",
                           "--answer", "A-1", env=WIDE)
    assert rendered.returncode == 0 and "Elsewhere: Q-1 / A-1" in rendered.stdout
    assert_one_line_error(run_embench("judges", "show", "elsewhere_judge"), "unknown judge 'elsewhere_judge'")
    assert_one_line_error(run_embench("judges", "list", "--judges-dir", str(tmp_path / "nowhere")),
                          "--judges-dir", "not a folder")
    # a folder whose judge clashes with a shipped one (same id and version, another template) is refused
    shipped = load_judge_file(project_judges_dir() / "aligned.yaml").version
    write(tmp_path / "clash" / "aligned.yaml", judge_yaml(judge_id="aligned", version=shipped))
    assert_one_line_error(run_embench("judges", "list", "--judges-dir", str(tmp_path / "clash")),
                          f"duplicate judge aligned@{shipped}")


def test_unknown_judge_id():
    assert_one_line_error(run_embench("judges", "show", "no_such_judge"), "unknown judge 'no_such_judge'", "aligned")
    assert_one_line_error(run_embench("judges", "render", "no_such_judge", "--question", "q", "--answer", "a"),
                          "unknown judge 'no_such_judge'")


# ---------------------------------------------------------------- Python API


def test_register_from_python(tmp_path):
    spec = JudgeSpec(id="api_judge", version=1, description="made in Python", higher_means="better",
                     variables=("question", "answer"), verdicts=("REFUSAL",),
                     template="Q: {{ question }}\nA: {{ answer }}\nScore 0-100 or REFUSAL.")
    target = embench.judges.register(spec, to=tmp_path / "mine")
    assert target == tmp_path / "mine" / "api_judge.v1.yaml"
    loaded = load_judge_file(target)
    assert loaded.template_sha256 == spec.computed_sha256
    assert loaded.model_dump(exclude={"template_sha256"}) == spec.model_dump(exclude={"template_sha256"})
    registry = JudgeRegistry([tmp_path / "mine"])
    assert registry.get("api_judge").render(question="hi", answer="there") == "Q: hi\nA: there\nScore 0-100 or REFUSAL."
    assert embench.judges.register(spec, to=tmp_path / "mine") == target  # identical: a no-op

    changed = spec.model_copy(update={"template": "Changed: {{ question }} {{ answer }}"})
    with pytest.raises(EmbenchError, match="bump"):
        embench.judges.register(changed, to=tmp_path / "mine")
    bumped = changed.model_copy(update={"version": 2})
    assert embench.judges.register(bumped, to=tmp_path / "mine").name == "api_judge.v2.yaml"
    assert JudgeRegistry([tmp_path / "mine"]).get("api_judge").version == 2

    unsafe = spec.model_copy(update={"id": "unsafe", "template": "{{ question.__class__ }} {{ answer }}"})
    with pytest.raises(EmbenchError, match="sandbox"):
        embench.judges.register(unsafe, to=tmp_path / "mine")
    assert not (tmp_path / "mine" / "unsafe.v1.yaml").exists()
    with pytest.raises(ValueError):
        JudgeSpec(id="Bad Id", version=1, description="d", higher_means="x", variables=("answer",), template="{{ answer }}")
