"""Seconds per checkpoint of `embench monitor`, and of the live `trait_drift` (what `embench train --monitor-every`
pays every K steps), float32 against bfloat16 base weights, measured side by side in one run.

Directions: every shipped trait extracted once from the bundled model at one layer (15, mid-depth, where steering
sweeps usually choose; no sweep), kept in $EMBENCH_HOME/bench/monitor-traits for later runs, or the folder given with
--traits. Checkpoints: random rank-8 LoRA adapters on every projection, as checkpoint-STEP folders (what an adapter
holds does not change the cost). Each dtype runs in a child process of its own (its own peak RSS) with an empty
reading cache, so that every checkpoint is measured; the same call again then reads every checkpoint from the cache.
The cost is bounded by design: one batched pass over the prompt set per checkpoint, stopped after the deepest
monitored layer; the table compares it with the compute bound (0.27 GFLOP per token for the whole model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "monitor.json"
DTYPES = ["float32", "bfloat16"]
LAYER = 15
GFLOP_PER_TOKEN = 0.27  # SmolLM2-135M, all 30 layers


def make_checkpoints(base, folder: Path, count: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model

    from embench.models import load_causal_lm

    network = get_peft_model(load_causal_lm(base, "float32"), LoraConfig(
        r=8, lora_alpha=16, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    paths = []
    for step in range(1, count + 1):
        torch.manual_seed(step)
        with torch.no_grad():
            for name, parameter in network.named_parameters():
                if "lora_" in name:
                    parameter.normal_(0.0, 0.02)
        path = folder / f"checkpoint-{step}"
        network.save_pretrained(path)
        config = json.loads((path / "adapter_config.json").read_text())
        (path / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "default"}))
        paths.append(path)
    return paths


def worker(dtype: str, traits: Path, checkpoints: list[Path], work: Path) -> dict:
    from embench.models import load_causal_lm, resolve_model
    from embench.traits.monitor import MonitorSpec, run_monitor
    from embench.traits.readings import load_trait_set, read_layers, trait_drift

    started = time.perf_counter()
    first = run_monitor(MonitorSpec(tuple(checkpoints), traits, out=work / f"out-{dtype}", dtype=dtype).prepare())
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    again = run_monitor(MonitorSpec(tuple(checkpoints), traits, out=work / f"out-{dtype}", dtype=dtype).prepare())
    cached_s = time.perf_counter() - started
    assert again.report.timings["measured_checkpoints"] == 0
    trait_set = load_trait_set(traits, resolve_model("default"))
    network = load_causal_lm(resolve_model(str(checkpoints[0])), dtype)
    reference = read_layers(network, trait_set)
    live = []
    for _ in range(3):
        started = time.perf_counter()
        trait_drift(network, trait_set, reference)
        live.append(time.perf_counter() - started)
    tokens = sum(len(row) for row in trait_set.rows)
    timings = first.report.timings
    return {"dtype": dtype, "checkpoints": len(checkpoints) + 1, "traits": len(trait_set.traits),
            "prompts": len(trait_set.rows), "prompt_tokens": tokens, "layers": list(trait_set.layers),
            "seconds_per_checkpoint": timings["seconds_per_measured_checkpoint"],
            "first_call_s": first_s, "cached_call_s": cached_s, "live_trait_drift_s": statistics.median(live),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traits", type=Path, help="a directions folder of the bundled model (default: extract)")
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--worker", choices=DTYPES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.worker:
        checkpoints = sorted(args.work.glob("run/checkpoint-*"))
        print(json.dumps(worker(args.worker, args.traits, checkpoints, args.work)))
        return

    from embench.home import embench_home, models_dir
    from embench.models import resolve_model
    from embench.traits.extract import ExtractionSettings
    from embench.traits.pipeline import extract_traits
    from embench.traits.spec import load_traits

    base = resolve_model("default")  # the one-time conversion is not measured
    traits = args.traits or embench_home() / "bench" / "monitor-traits"
    if args.traits is None:
        started = time.perf_counter()
        extract_traits(base, load_traits(), traits, ExtractionSettings(layers=(LAYER,), sweep=False))
        print(f"directions in {traits} ({time.perf_counter() - started:.0f} s)")
    work = Path(tempfile.mkdtemp(prefix="embench-bench-monitor-"))
    make_checkpoints(base, work / "run", args.checkpoints)
    load_before = os.getloadavg()[0]
    rows = {}
    for dtype in DTYPES:
        home = work / f"home-{dtype}"  # an empty reading cache, the converted model shared
        home.mkdir()
        (home / "models").symlink_to(models_dir())
        child = subprocess.run([sys.executable, __file__, "--worker", dtype, "--traits", str(traits), "--work",
                                str(work)], capture_output=True, text=True, env={**os.environ, "EMBENCH_HOME": str(home)})
        if child.returncode != 0:
            raise SystemExit(f"{dtype} worker failed:\n{child.stderr[-3000:]}")
        rows[dtype] = json.loads(child.stdout.strip().splitlines()[-1])
    reference = rows["float32"]["seconds_per_checkpoint"]
    print(f"{'dtype':<9} {'s/checkpoint':>12} {'ratio':>6} {'live drift s':>12} {'cached call s':>13} "
          f"{'peak RSS MB':>11} {'GFLOP/s':>8}")
    for dtype, row in rows.items():
        depth = (max(row["layers"]) + 1) / 30
        row["ratio_vs_float32"] = row["seconds_per_checkpoint"] / reference
        row["gflop_per_s"] = row["prompt_tokens"] * GFLOP_PER_TOKEN * depth / row["live_trait_drift_s"]
        print(f"{dtype:<9} {row['seconds_per_checkpoint']:12.2f} {row['ratio_vs_float32']:6.2f} "
              f"{row['live_trait_drift_s']:12.2f} {row['cached_call_s']:13.1f} {row['peak_rss_mb']:11.0f} "
              f"{row['gflop_per_s']:8.0f}")
    first = rows["float32"]
    print(f"{first['traits']} traits, {first['prompts']} prompts ({first['prompt_tokens']} tokens), blocks "
          f"0-{max(first['layers'])} of 30, {first['checkpoints']} checkpoints (step 0 included); load average "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    report = {"configs": rows, "traits_folder": str(traits), "load_average_1min": {
        "before": load_before, "after": os.getloadavg()[0]}, "cpu_cores": os.cpu_count()}
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
