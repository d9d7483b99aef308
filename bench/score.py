"""Wall time of `embench score default --suite em-core`, split into its phases, with peak RSS.

Target on this 2-core machine, after the one-time model preparation: <= 5 minutes for em-core at >= 10 samples
per question. The score directory is fresh (nothing resumed); the judgment cache is a fresh one too, so every
judgment is computed. Phases: model loading (vLLM engine), generation, judge loading, judging, perplexity, metrics.

``--generation`` instead measures the suite's generation alone, side by side in one run, each way in its own fresh
process on the same planned samples: ``per-task`` is the path before one submission per suite (one engine call per
task), ``suite`` is what `embench score` does now, ``suite+preloads`` adds the allocator and OpenMP libraries
that vLLM's CPU guide recommends preloading (where they are installed). It prints ``generation speed-up: N.NNx``
(``suite`` against ``per-task``, or ``suite+preloads`` where that ran) and checks that every way drew the same text
for every sample key.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "score.json"
GENERATION_RESULTS_FILE = RESULTS_FILE.with_name("score-generation.json")
TARGET_S = 300
TARGET_SPEED_UP = 3.0
WAYS = ("per-task", "suite", "suite+preloads")


def generate_one_way(way: str, suite: str, samples: int | None, checkpoint: str, work: Path) -> dict:
    """Plan the suite as `embench score` does and draw it one way; runs in its own process."""
    from embench.engines import open_engine
    from embench.generate import run_jobs
    from embench.runs import read_generations
    from embench.score import ScoreSpec, plan_task, prepare_score

    prepared = prepare_score(ScoreSpec(checkpoint=checkpoint, suite=suite, samples=samples, out=work / "score"))
    jobs = [plan_task(prepared, task) for task in prepared.tasks if task.questions]
    started = time.perf_counter()
    with open_engine(prepared.spec.engine, prepared.model, prepared.spec.options) as backend:
        opened = time.perf_counter()
        if way == "per-task":
            for job in jobs:
                run_jobs([job], backend)
        else:
            run_jobs(jobs, backend)
        finished = time.perf_counter()
        info = backend.info()
    texts = {generation.key: generation.completion for job in jobs for generation in read_generations(job.out)}
    tokens = sum(generation.completion_tokens for job in jobs for generation in read_generations(job.out))
    return {"way": way, "engine": info, "samples": len(texts), "completion_tokens": tokens,
            "startup_s": opened - started, "generation_s": finished - opened,
            "tokens_per_s": tokens / (finished - opened), "peak_rss_mb": peak_rss_mb(),
            "ld_preload": os.environ.get("LD_PRELOAD", ""), "texts": texts}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare_generation(args: argparse.Namespace) -> None:
    from embench.hardware import cpu_preloads

    preloads = cpu_preloads()
    ways = [way for way in WAYS if way != "suite+preloads" or preloads]
    if not preloads:
        print("suite+preloads not run: neither libiomp5 (PyPI intel-openmp) nor tcmalloc (Debian libtcmalloc-minimal4)"
              " is installed")
    rows = []
    with tempfile.TemporaryDirectory(prefix="embench-bench-generation-") as work:
        for way in ways:
            env = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
            if way == "suite+preloads":
                env["LD_PRELOAD"] = ":".join(str(path) for path in preloads)
            result_path = Path(work) / f"{way}.json"
            print(f"generating {args.suite} {way} ...", flush=True)
            subprocess.run([sys.executable, __file__, "--one-way", way, "--suite", args.suite, "--checkpoint",
                            args.checkpoint, *(["--samples", str(args.samples)] if args.samples else []),
                            "--work", str(Path(work) / way), "--report", str(result_path)], env=env, check=True)
            rows.append(json.loads(result_path.read_text()))
    baseline = rows[0]
    print(f"{'way':<16}{'start_s':>9}{'gen_s':>8}{'tokens':>8}{'tok/s':>8}{'ratio':>7}{'peak_MB':>9}  same texts")
    for row in rows:
        same = row["texts"] == baseline["texts"]
        print(f"{row['way']:<16}{row['startup_s']:>9.1f}{row['generation_s']:>8.1f}{row['completion_tokens']:>8d}"
              f"{row['tokens_per_s']:>8.1f}{baseline['generation_s'] / row['generation_s']:>6.2f}x"
              f"{row['peak_rss_mb']:>9.0f}  {'yes' if same else 'NO'}")
    speed_up = baseline["generation_s"] / rows[-1]["generation_s"]
    print(f"generation speed-up: {speed_up:.2f}x ({rows[-1]['way']} against per-task, float32 both; "
          f"target >= {TARGET_SPEED_UP:.0f}x)")
    differing = [row["way"] for row in rows if row["texts"] != baseline["texts"]]
    if differing:
        print(f"warning: {', '.join(differing)} drew other texts than per-task for some sample keys")
    print(f"dtype {baseline['engine'].get('dtype')}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    report = {"suite": args.suite, "checkpoint": args.checkpoint, "speed_up": speed_up,
              "target_speed_up": TARGET_SPEED_UP, "identical_texts": not differing,
              "ways": [{key: value for key, value in row.items() if key != "texts"} for row in rows]}
    GENERATION_RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    GENERATION_RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="em-core")
    parser.add_argument("--samples", type=int, default=None, help="samples per question (default: the suite's)")
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--kv-cache-gib", type=float, default=None, help="vLLM KV cache (default: embench score's)")
    parser.add_argument("--generation", action="store_true", help="generation alone, each way side by side")
    parser.add_argument("--one-way", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one_way:
        args.report.write_text(json.dumps(generate_one_way(args.one_way, args.suite, args.samples, args.checkpoint,
                                                           args.work)))
        return
    if args.generation:
        compare_generation(args)
        return

    from embench.home import models_dir
    from embench.models import resolve_model
    from embench.score import ScoreSpec, prepare_score, run_score

    resolve_model(args.checkpoint)  # the one-time preparation is not part of what is measured
    work = Path(tempfile.mkdtemp(prefix="embench-bench-score-"))
    spec = ScoreSpec(checkpoint=args.checkpoint, suite=args.suite, samples=args.samples, out=work / "score")
    if args.kv_cache_gib is not None:
        spec.options = spec.options.model_copy(update={"kv_cache_gib": args.kv_cache_gib})
    started = time.perf_counter()
    prepared = prepare_score(spec)
    # A private judgment cache, so that every judgment is computed; its models folder is the real one, so that the
    # judge model is not converted again (a user's judge load reads the prepared model).
    (work / "home").mkdir()
    (work / "home" / "models").symlink_to(models_dir(), target_is_directory=True)
    os.environ["EMBENCH_HOME"] = str(work / "home")
    scored = run_score(prepared)
    wall = time.perf_counter() - started
    timings = scored.timings_s
    samples = sum(counts["effective"] for counts in scored.results.n_samples.values())
    report = {"suite": args.suite, "checkpoint": args.checkpoint, "samples": samples, "wall_s": wall,
              "phases_s": timings, "peak_rss_mb": peak_rss_mb(),
              "load_average_1min": os.getloadavg()[0], "target_s": TARGET_S}
    print(f"embench score {args.checkpoint} --suite {args.suite}: {samples} samples in {wall:.0f} s "
          f"({'within' if wall <= TARGET_S else 'over'} the {TARGET_S} s target)")
    for phase, seconds in timings.items():
        print(f"  {phase:<12} {seconds:7.1f} s  {seconds / wall:6.1%}")
    if "judging" in timings and "generation" in timings:
        print(f"  judging / generation: {timings['judging'] / timings['generation']:.0%} (target <= 30%)")
    print(f"peak RSS {report['peak_rss_mb']:.0f} MB, load average {report['load_average_1min']:.1f} on 2 cores")
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)  # the models link goes, the models it points to stay


if __name__ == "__main__":
    main()
