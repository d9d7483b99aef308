"""``embench reproduce``: the in-training defenses compared on the same data, seeds and evaluation.

A preset (``tasks/reproduce/<id>.yaml``, or any file) names a base model, training datasets (each with the narrow
task that probes its own domain), defenses with their arguments, seeds, trainer hyper-parameters and how to score.
Every cell of datasets x defenses x seeds is trained, scored on one suite (the preset's suite, every dataset's
in-domain probe and the benign task) and published to a leaderboard; the base model, untrained, is scored once on
the same suite as the reference. The output folder holds

- ``reproduce.json``: the preset, the judge and the fingerprint of both (a folder holding another is refused);
- ``suite.yaml``: the suite every cell is scored on;
- ``base/`` and ``cells/<dataset>/<defense>/seed-<s>/``: ``adapter/`` (the training run), ``score/`` (the score
  directory) and ``cell.json``, written last and atomically: a cell with it is finished and never run again. A
  cell cut short resumes through the trainer's checkpoints and the score directory's finished samples;
- ``leaderboard/<preset id>/``: a board with every finished cell as an entry, tagged with its defense and dataset;
- ``comparison.json``, ``comparison.md``, ``comparison.png``: per dataset and defense, general EM %, general
  incoherent %, in-domain misaligned %, in-domain incoherent % and benign accuracy with 95% intervals.
"""

from embench.reproduce.comparison import METRICS
from embench.reproduce.matrix import run_reproduce
from embench.reproduce.plan import ReproducePlan, ReproduceResult, ReproduceSpec, listed, parse_seeds, plan_reproduce

__all__ = ["METRICS", "ReproducePlan", "ReproduceResult", "ReproduceSpec", "listed", "parse_seeds", "plan_reproduce",
           "run_reproduce"]
