"""Local judging cost: ``exact`` mode with and without prefix reuse, a fully cached re-run, and judging vs generation.

It also times the same exact judgments with the judge's grouped attention (the default, see
``embench.judges.hf_backend.grouped_attention``) and with transformers' SDPA, side by side.

``exact`` scores ~100 continuations ("0".."100", verdict words) of every judge prompt. With prefix reuse (the
hf backend's tree attention mask) the prompt is computed once per judgment; without it, each continuation is
its own forward pass of prompt + continuation, which is what a naive implementation does. The run judged is the
built-in `smoke` task generated here with the vLLM engine, so judging time can be set against generation time
(target: judging <= 30% of generation time). Peak RSS is this process's (vLLM and the hf judge together).
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

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "judging.json"


def naive_exact_seconds(backend, spec, generations, count: int) -> float:
    """Seconds per judgment when every candidate output gets its own forward pass (no prefix reuse)."""
    import torch

    from embench.judges.judging import judge_inputs

    started = time.perf_counter()
    for generation in generations[:count]:
        prompt = backend.template.user_turn_ids(spec.render(**judge_inputs(generation)))
        for path in backend._paths(spec.verdicts).values():
            with torch.inference_mode():
                backend.network(input_ids=torch.tensor([prompt + list(path)]))
    return (time.perf_counter() - started) / count


def attention_seconds(backend, spec, generations, count: int) -> dict[str, float]:
    """Seconds per exact judgment of the first ``count`` generations under each attention implementation, in turn,
    uncached (the backend is called directly), after one warm-up judgment each."""
    from embench.judges.backends import JudgeRequest
    from embench.judges.hf_backend import JUDGE_ATTENTION
    from embench.judges.judging import judge_inputs

    requests = [JudgeRequest(key=g.key, prompt=spec.render(**judge_inputs(g)), shared_prefix=spec.static_head)
                for g in generations[:count]]
    seconds = {}
    for implementation in ("sdpa", JUDGE_ATTENTION):
        backend.network.set_attn_implementation(implementation)
        backend.judge(requests[:1], "exact", spec.reading, lambda outcome: None)
        started = time.perf_counter()
        backend.judge(requests, "exact", spec.reading, lambda outcome: None)
        seconds[implementation] = (time.perf_counter() - started) / len(requests)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="smoke")
    parser.add_argument("--judges", default="aligned,coherent")
    parser.add_argument("--naive-samples", type=int, default=2, help="judgments timed without prefix reuse")
    parser.add_argument("--attention-samples", type=int, default=16, help="judgments timed per attention kernel")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from embench.generate import generate
    from embench.judges import JudgeRegistry
    from embench.judges.hf_backend import JUDGE_ATTENTION, HFJudgeBackend
    from embench.judges.judging import judge_run
    from embench.layout import JUDGMENTS_FILE
    from embench.models import resolve_model
    from embench.runs import read_generations
    from embench.tasks import find_task

    model = resolve_model("default")
    task = find_task(args.task)
    work = Path(tempfile.mkdtemp(prefix="embench-bench-judging-"))
    run_dir = work / "run"
    started = time.perf_counter()
    generate(model, task.prompts(), run_dir, n=task.samples_per_question, sampling=task.sampling)
    generation_s = time.perf_counter() - started
    generations = list(read_generations(run_dir))
    tokens = sum(g.completion_tokens or 0 for g in generations)

    registry = JudgeRegistry.default()
    specs = [registry.get(judge_id) for judge_id in args.judges.split(",")]
    # A cold judgment cache of its own (the model, already resolved, stays where it is): every judgment is computed
    # and the user's cache is left alone.
    os.environ["EMBENCH_HOME"] = str(work / "home")
    started = time.perf_counter()
    backend = HFJudgeBackend(model)
    judge_load_s = time.perf_counter() - started
    started = time.perf_counter()
    for spec in specs:
        judge_run(run_dir, spec, backend, "exact")
    judging_s = time.perf_counter() - started
    judgments = len(generations) * len(specs)

    (run_dir / JUDGMENTS_FILE).unlink()
    started = time.perf_counter()
    for spec in specs:
        cached = judge_run(run_dir, spec, backend, "exact")
        assert cached.cached == len(generations), "the re-run should be served from the cache"
    cached_s = time.perf_counter() - started
    naive_s = naive_exact_seconds(backend, specs[0], generations, args.naive_samples)
    attention = attention_seconds(backend, specs[0], generations, args.attention_samples)
    grouped_s, sdpa_s = attention[JUDGE_ATTENTION], attention["sdpa"]

    results = {
        "task": task.id, "generations": len(generations), "completion_tokens": tokens,
        "generation_s": generation_s, "judge_load_s": judge_load_s, "judgments": judgments,
        "judging_s": judging_s, "judgments_per_s": judgments / judging_s,
        "exact_s_per_judgment_prefix_reuse": judging_s / judgments,
        "exact_s_per_judgment_no_reuse": naive_s,
        "cached_rerun_s": cached_s,
        "exact_s_per_judgment_by_attention": attention,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average_1min": os.getloadavg()[0],
    }
    print(f"generation ({task.id}, vllm): {len(generations)} samples, {tokens} tokens in {generation_s:.1f} s")
    print(f"judging (exact, hf, {len(specs)} judges): {judgments} judgments in {judging_s:.1f} s "
          f"= {results['judgments_per_s']:.2f} judgments/s (judge load {judge_load_s:.1f} s)")
    print(f"exact s/judgment: {results['exact_s_per_judgment_prefix_reuse']:.2f} with prefix reuse, "
          f"{naive_s:.2f} without -> {naive_s / results['exact_s_per_judgment_prefix_reuse']:.1f}x from reuse")
    print(f"fully cached re-run: {cached_s:.2f} s ({cached_s / judging_s:.1%} of the first judging)")
    print(f"exact s/judgment by attention ({args.attention_samples} judgments each): grouped {grouped_s:.3f}, "
          f"sdpa {sdpa_s:.3f} -> {sdpa_s / grouped_s:.2f}x from grouped attention")
    print(f"judging / generation time: {judging_s / generation_s:.0%} (target <= 30%)")
    print(f"peak RSS {results['peak_rss_mb']:.0f} MB, load average {results['load_average_1min']:.1f} on 2 cores")
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
