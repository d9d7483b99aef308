"""Every on-disk name embench writes or reads, in one place: a run directory, a score directory, a training folder,
a monitor folder, a reproduction folder, a board and a trained judge.

The modules that write each folder own its logic; only the names live here, so that a reader of one folder
(the leaderboard reading a training folder, the monitor reading a score directory) never re-types them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

# An id that names a folder (a task's run directory, a suite's score directory): letters, digits, '.', '_', '-',
# starting with a letter or digit, so that no id can climb out of its parent ('../x') or pass the file-name limit.
FOLDER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
FolderId = Annotated[str, Field(pattern=FOLDER_ID_PATTERN, max_length=128)]

# A run directory (`embench generate`, and each task of a score directory): config and provenance, records.
RUN_FILE = "run.json"
GENERATIONS_FILE = "generations.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"

# A score directory (`embench score`): one run directory per task under tasks/<task id>/.
RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl"
SCORE_STATE_FILE = "score.json"
LIBRARY_LOG_FILE = "libraries.log"  # what vLLM, torch and transformers print during a run (unless --verbose)
TASKS_DIR = "tasks"

# A training folder (`embench train`): the record, the log, the final adapter, checkpoint-STEP/ folders.
TRAIN_FILE = "train.json"
TRAIN_LOG_FILE = "train_log.jsonl"
TRAINER_STATE_FILE = "trainer_state.json"  # only in checkpoint-STEP/ folders
TRAINER_TENSORS_FILE = "trainer_state.safetensors"  # AdamW moments and RNG state, beside it
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
CHECKPOINT_PREFIX = "checkpoint-"

# A monitor folder (`embench monitor`).
MONITOR_FILE = "monitor.json"

# A reproduction folder (`embench reproduce`): a record, the suite, a cell record per cell, a board.
REPRODUCE_FILE = "reproduce.json"
CELL_FILE = "cell.json"
SUITE_FILE = "suite.yaml"
REPRODUCE_BOARD_DIR = "leaderboard"
COMPARISON_STEM = "comparison"  # comparison.json, .md and .png

# A board folder and the boards' root.
BOARD_FILE = "leaderboard.json"
PAGE_FILE = "index.html"

# A trained judge folder.
TRAINED_JUDGE_FILE = "judge.json"
TRAINED_WEIGHTS_FILE = "weights.safetensors"


def task_run_dir(score_dir: Path, task_id: str) -> Path:
    """The run directory of one task of a score directory."""
    return Path(score_dir) / TASKS_DIR / task_id


def results_file(path: Path) -> Path:
    """``results.json`` of a score directory, or the file itself when given one."""
    path = Path(path)
    return path / RESULTS_FILE if path.is_dir() else path
