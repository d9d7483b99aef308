"""Wall time of `embench score default --suite em-core`, split into its phases, with peak RSS.

Target on this 2-core machine, after the one-time model preparation: <= 5 minutes for em-core at >= 10 samples
per question. The score directory is fresh (nothing resumed); the judgment cache is a fresh one too, so every
judgment is computed. Phases: model loading (vLLM engine), generation, judge loading, judging, perplexity, metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "score.json"
TARGET_S = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="em-core")
    parser.add_argument("--samples", type=int, default=None, help="samples per question (default: the suite's)")
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--kv-cache-gib", type=float, default=None, help="vLLM KV cache (default: embench score's)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
              "phases_s": timings, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
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
