"""The Ray executor's overhead against the local one, on the same cells, side by side in one run.

The matrix is the one tests/test_reproduce.py runs (the bundled model, a few generated insecure-code examples, two
training steps, no defense and inoculation, plus the base model; hf engine, 2 samples per question at 16 tokens),
judged over HTTP by the tests' fault server on 127.0.0.1 (its answers are instant, so judging costs nothing here).
Each executor starts from an empty folder and a warm model cache; Ray gets a local instance with as many CPUs as
the machine, once with one per cell (cells side by side) and once with all of them per cell (one cell at a time,
as the local executor runs them: the pure overhead); the time includes starting Ray. Printed: wall seconds of
each, the ratio, and the per-cell train and score seconds from the cells' records.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.fault_server import FaultServer  # noqa: E402  (a real HTTP judge, shared with the tests)
from tests.test_reproduce import CELLS, JUDGE, cell_folder, write_preset  # noqa: E402

RESULTS_FILE = REPO / "bench" / "results" / "reproduce.json"


def run(preset: Path, out: Path, server: FaultServer, *extra: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "embench", "reproduce", "--preset", str(preset), "--out", str(out),
                    "--judge-model", JUDGE, "--judge-base-url", server.base_url, "--judge-mode", "logprob", *extra],
                   check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - started


def cell_seconds(out: Path) -> dict[str, dict[str, float]]:
    records = {label: json.loads((cell_folder(out, label) / "cell.json").read_text()) for label in CELLS}
    return {label: {"train": (record.get("train") or {}).get("seconds", 0.0), "score": record["score"]["seconds"]}
            for label, record in records.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, FaultServer(model=JUDGE) as server:
        root = Path(folder)
        preset = write_preset(root / "preset")
        run(preset, root / "warm", server)  # the model cache and every import warm for both executors
        local = run(preset, root / "local", server)
        on_ray = run(preset, root / "ray", server, "--executor", "ray")
        serial = run(preset, root / "ray-serial", server, "--executor", "ray", "--cpus-per-cell", str(os.cpu_count()))
        result = {"local_seconds": local, "ray_seconds": on_ray, "ray_over_local": on_ray / local,
                  "ray_one_at_a_time_seconds": serial, "ray_one_at_a_time_over_local": serial / local,
                  "cells": len(CELLS), "cpus": os.cpu_count(),
                  "local_cells": cell_seconds(root / "local"), "ray_cells": cell_seconds(root / "ray"),
                  "ray_one_at_a_time_cells": cell_seconds(root / "ray-serial")}
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(CELLS)} cells on {os.cpu_count()} CPUs: local {local:.1f} s, ray {on_ray:.1f} s "
          f"(ray / local: {on_ray / local:.2f}x); ray one cell at a time (--cpus-per-cell {os.cpu_count()}) "
          f"{serial:.1f} s ({serial / local:.2f}x)")
    for label in CELLS:
        print(f"  {label}: " + "; ".join(
            f"{way} train {cells[label]['train']:.1f} s + score {cells[label]['score']:.1f} s"
            for way, cells in (("local", result["local_cells"]), ("ray", result["ray_cells"]),
                               ("ray one at a time", result["ray_one_at_a_time_cells"]))))


if __name__ == "__main__":
    main()
