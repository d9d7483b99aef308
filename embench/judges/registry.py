"""Where judges come from: the project's ``judges/``, the user's ``$EMBENCH_HOME/judges``, any ``--judges-dir``.

A new judge prompt is a file: ``register`` validates it and installs it; nothing in the code changes.
"""

from __future__ import annotations

from pathlib import Path

from embench.errors import EmbenchError
from embench.files import check_writable_folder
from embench.home import embench_home
from embench.judges.spec import JudgeSpec, check_template, dump_judge, load_judge_file


def project_judges_dir() -> Path:
    """The checkout's ``judges/``, else the copy packaged inside the wheel."""
    checkout = Path(__file__).resolve().parent.parent.parent / "judges"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parent.parent / "_data" / "judges"


def user_judges_dir() -> Path:
    return embench_home() / "judges"


class JudgeRegistry:
    """Every judge found in the given folders (later folders add to, and must agree with, earlier ones)."""

    def __init__(self, folders: list[Path]):
        self.folders = folders
        self._specs: dict[tuple[str, int], tuple[JudgeSpec, Path]] = {}
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.yaml")):
                self._add(load_judge_file(path), path)

    @classmethod
    def default(cls, extra: Path | None = None) -> "JudgeRegistry":
        if extra is not None and not extra.is_dir():
            raise EmbenchError(f"--judges-dir {extra} is not a folder")
        folders = [project_judges_dir(), user_judges_dir()]
        return cls(folders + ([extra] if extra is not None else []))

    def _add(self, spec: JudgeSpec, path: Path) -> None:
        known = self._specs.get((spec.id, spec.version))
        if known is not None:
            other, other_path = known
            if other.computed_sha256 != spec.computed_sha256:
                raise EmbenchError(f"duplicate judge {spec.key}: {path} and {other_path} hold different templates "
                                   "under the same id and version: bump the version of one")
            return
        self._specs[(spec.id, spec.version)] = (spec, path)

    def specs(self) -> list[JudgeSpec]:
        return [spec for spec, _ in sorted(self._specs.values(), key=lambda item: (item[0].id, item[0].version))]

    def path_of(self, spec: JudgeSpec) -> Path:
        return self._specs[(spec.id, spec.version)][1]

    def find(self, judge_id: str, version: int) -> tuple[JudgeSpec, Path] | None:
        return self._specs.get((judge_id, version))

    def get(self, reference: str) -> JudgeSpec:
        """``id`` (its latest version) or ``id@version``."""
        judge_id, _, version = reference.partition("@")
        versions = sorted(v for (i, v) in self._specs if i == judge_id)
        if not versions:
            known = ", ".join(sorted({i for i, _ in self._specs})) or "none"
            raise EmbenchError(f"unknown judge '{judge_id}' (known: {known}); add one with `embench judges add FILE`")
        if version:
            if not version.isdigit() or int(version) not in versions:
                raise EmbenchError(f"judge '{judge_id}' has no version {version} (versions: {versions})")
            return self._specs[(judge_id, int(version))][0]
        return self._specs[(judge_id, versions[-1])][0]


def register(spec: JudgeSpec, to: Path | None = None, registry: JudgeRegistry | None = None) -> Path:
    """Validate a judge and install it (with its template hash) into ``to`` or the user's judges folder.

    Re-registering the identical judge is a no-op; the same id and version with another template is an error.
    """
    check_template(spec, spec.key)
    if to is not None:
        check_writable_folder(to, "--to")
    # ``to`` need not exist yet (it is created below), so it is not passed as a --judges-dir would be.
    registry = registry or JudgeRegistry([project_judges_dir(), user_judges_dir(), *([to] if to is not None else [])])
    existing = registry.find(spec.id, spec.version)
    if existing is not None:
        if existing[0].computed_sha256 != spec.computed_sha256:
            raise EmbenchError(f"judge {spec.key} already exists ({existing[1]}) with a different template: "
                               "bump 'version' to register a changed prompt")
        if to is None:
            return existing[1]
        here = JudgeRegistry([to]).find(spec.id, spec.version)  # an explicit ``to`` gets its own copy
        if here is not None:
            return here[1]
    folder = to or user_judges_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{spec.id}.v{spec.version}.yaml"
    temporary = target.with_suffix(".yaml.tmp")
    temporary.write_text(dump_judge(spec), encoding="utf-8")
    temporary.replace(target)
    return target
