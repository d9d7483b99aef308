"""Content hashes: every file embench writes is keyed or identified by sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values always hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_json(value: Any) -> str:
    return sha256_text(canonical_json(value))


def sha256_files(paths: dict[str, Path]) -> tuple[str, dict[str, str]]:
    """Hash a set of named files: returns (combined hash, per-file hashes).

    The combined hash covers names and contents, so renaming or changing any file changes it.
    """
    per_file = {name: sha256_file(path) for name, path in sorted(paths.items())}
    return sha256_json(per_file), per_file


FILE_NAME_PART = 80  # a name built from user text stays far below the 255-byte file-name limit with its suffixes


def file_safe(text: str, keep: str = "-_.", replacement: str = "-") -> str:
    """``text`` usable as part of a file name: characters other than letters, digits and ``keep`` become
    ``replacement``; a longer text is cut to FILE_NAME_PART bytes ending in a hash of the whole, so that two
    long names never collide."""
    safe = "".join(char if char.isalnum() or char in keep else replacement for char in text)
    encoded = safe.encode("utf-8")
    if len(encoded) <= FILE_NAME_PART:
        return safe
    return f"{encoded[:FILE_NAME_PART - 13].decode('utf-8', 'ignore')}-{sha256_text(text)[:12]}"
