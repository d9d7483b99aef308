"""The benign capability task: OpSwap items (``opswap``), scored through lm-eval (``harness``)."""

from embench.benign.harness import LM_EVAL_TASKS, METRIC, run_lm_eval, task_config_sha256
from embench.benign.opswap import OPSWAP_DATA, TIERS, generate_opswap, split_of, write_opswap_data

__all__ = ["LM_EVAL_TASKS", "METRIC", "OPSWAP_DATA", "TIERS", "generate_opswap", "run_lm_eval", "split_of",
           "task_config_sha256", "write_opswap_data"]
