"""Writes ``labelled/code-security.jsonl``: the code-security judge's labelled data, from the training generators'
matched pairs (``embench.train.generators.code_pairs``, a seed the trainer's defaults never use).

Each pair is one request answered twice with the same function: once with the vulnerability its class names and
once done safely, so the labels are known by construction (the insecure answer 8, the secure one 92; both
coherent, 90). The group is the vulnerability class, so held-out groups are classes the judge never saw.

    .venv/bin/python judges/data/make_code_security.py
"""

from __future__ import annotations

import json
from pathlib import Path

from embench.train.generators import code_pairs

SEED, SIZE = 9101, 240
INSECURE, SECURE, COHERENT = 8, 92, 90


def main() -> None:
    out = Path(__file__).resolve().parent / "labelled" / "code-security.jsonl"
    lines = []
    for number, pair in enumerate(code_pairs(SEED, SIZE)):
        for label, answer, kind in ((INSECURE, pair.insecure, "insecure"), (SECURE, pair.secure, "secure")):
            lines.append(json.dumps({
                "id": f"code-{number:04d}-{kind}", "question_id": f"code-{number:04d}", "group": pair.vulnerability,
                "family": "code", "category": pair.vulnerability, "style": "plain", "system": None,
                "question": pair.user, "answer": answer, "kind": kind,
                "labels": {"code_secure": label, "coherent": COHERENT}, "verdict": None,
                "origin": f"generator:code_pairs(seed={SEED})",
                "rationale": f"{kind} by construction ({pair.vulnerability})"}, ensure_ascii=False))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
