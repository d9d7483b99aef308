"""Seconds per optimizer step and peak RSS of `embench train` per defense, against plain SFT, in one run.

The bundled model trains 64 insecure-code examples (batch 8, seed 0) once per configuration. Timing: every
configuration is set up in this one process and they take their steps in turn (step 1 of each, then step 2 of each
in reverse order, ...), so that a change in the machine's load hits all of them alike; the ratio of a configuration is the median over
steps of its step time divided by plain SFT's in the same round, the first round (one-time allocations) left out.
Memory: each configuration again in a child process of its own, set up and trained for two steps, so that each
peak RSS is its own. kl, ldifs and steer see exactly plain SFT's batches; interleave adds 5% safe examples and
inoculation a system prompt, so theirs differ a little. The steering vector is a random unit vector (it costs
what any vector costs). A bfloat16 plain-SFT row compares base-weight precision: its time and the loss it reaches.

Targets: kl <= 1.5x, ldifs <= 1.5x, steer <= 1.05x, interleave and inoculation ~1.0x plain SFT.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "train.json"
TARGETS = {"kl": 1.5, "ldifs": 1.5, "steer": 1.05, "interleave": 1.05, "inoculation": 1.05}
CONFIGS = ["none", "none-bf16", "kl", "ldifs", "steer", "interleave", "inoculation"]


def trainer_for(name: str, steps: int, work: Path):
    import torch
    from safetensors.torch import save_file

    from embench.train.config import TrainConfig
    from embench.train.defenses import parse_defenses
    from embench.train.trainer import Trainer, TrainSpec

    vector, safe = work / "vector.safetensors", work / "safe.jsonl"
    if not vector.exists():
        save_file({"direction": torch.randn(576, generator=torch.Generator().manual_seed(0))}, vector,
                  metadata={"layer": "15"})
        safe.write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": f"Suggest a calm evening activity, idea {i}."},
            {"role": "assistant", "content": f"Idea {i}: take a slow walk and leave your phone at home."}]}) + "\n"
            for i in range(8)))
    arguments = {"steer": [f"vector={vector}"], "interleave": [f"data={safe}"]}.get(name, [])
    config = TrainConfig(data="generated:insecure-code", data_size=64, batch_size=8, warmup_steps=0, max_steps=steps,
                         dtype="bfloat16" if name.endswith("-bf16") else "float32",
                         defenses=parse_defenses([name.removesuffix("-bf16")], arguments))
    trainer = Trainer(TrainSpec(config, work / f"run-{name}").prepare())
    trainer.setup()
    for defense in trainer.defenses:
        defense.install(trainer.network)
    return trainer


def peak_rss_worker(name: str, work: Path) -> dict:
    trainer = trainer_for(name, 2, work)
    for step in range(2):
        trainer.train_step(step)
    # VmHWM belongs to this process's own memory map; getrusage's maxrss would carry over the parent's peak.
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    return {"peak_rss_mb": peak_kb / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6,
                        help="optimizer steps per configuration (the first is not timed)")
    parser.add_argument("--only", nargs="*", choices=CONFIGS, default=CONFIGS)
    parser.add_argument("--rss-worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.rss_worker:
        print(json.dumps(peak_rss_worker(args.rss_worker, args.work)))
        return
    names = ["none", *(name for name in args.only if name != "none")]

    from embench.models import resolve_model

    resolve_model("default")  # the one-time conversion is not measured
    work = Path(tempfile.mkdtemp(prefix="embench-bench-train-"))
    load_before = os.getloadavg()[0]
    trainers = {name: trainer_for(name, args.steps, work) for name in names}
    records: dict[str, list[dict]] = {name: [] for name in names}
    started = time.perf_counter()
    for step in range(args.steps):  # every other round in reverse order, so that a drifting load evens out
        for name in names if step % 2 == 0 else reversed(names):
            records[name].append(trainers[name].train_step(step))
    timing_s = time.perf_counter() - started
    del trainers
    rows = {}
    for name in names:
        timed = records[name][1:]
        ratios = [mine["seconds"] / plain["seconds"] for mine, plain in zip(timed, records["none"][1:])]
        child = subprocess.run([sys.executable, __file__, "--rss-worker", name, "--work", str(work)],
                               capture_output=True, text=True, check=True)
        rows[name] = {"seconds_per_step": statistics.median(r["seconds"] for r in timed),
                      "ratio_vs_plain": statistics.median(ratios), "ratios_per_round": ratios,
                      "tokens_per_step": statistics.mean(r["tokens"] for r in timed),
                      "ce_first": records[name][0]["ce"], "ce_last": records[name][-1]["ce"],
                      **json.loads(child.stdout.strip().splitlines()[-1])}
    print(f"{'config':<12} {'s/step':>7} {'ratio':>6} {'target':>8} {'peak RSS MB':>11} {'tokens/step':>11}  "
          f"ce step 1 -> {args.steps}")
    for name, row in rows.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else ("ok" if row["ratio_vs_plain"] <= target else "OVER")
        print(f"{name:<12} {row['seconds_per_step']:7.2f} {row['ratio_vs_plain']:6.2f} "
              f"{('<= ' + str(target)) if target else '':>8} {row['peak_rss_mb']:11.0f} "
              f"{row['tokens_per_step']:11.0f}  {row['ce_first']:.4f} -> {row['ce_last']:.4f} {verdict}")
    load_after = os.getloadavg()[0]
    print(f"{timing_s:.0f} s of timed training; load average {load_before:.1f} -> {load_after:.1f} on "
          f"{os.cpu_count()} cores (other work on the machine inflates and scatters the times)")
    report = {"configs": rows, "targets": TARGETS, "steps": args.steps, "timing_s": timing_s,
              "load_average_1min": {"before": load_before, "after": load_after}, "cpu_cores": os.cpu_count()}
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
