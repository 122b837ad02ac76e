"""A converged-table run is the same run on any machine: a queue line trained again gives its
committed results' validations digit for digit (issue 36). Since the plateau rule and the step
cap decide only from those validations, equal validations mean the same stopping step and the
same tested checkpoint; the cheapest line's first validations are checked here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT
from tests.helpers import OMNIGLOT_ENV, omniglot_root, requires_omniglot
from tests.scripts.test_run_queue import run_queue  # the script, loaded once

LINE = "omniglot_baseline_nn_5w1s_s0"
COMMITTED = PROJECT_ROOT / "results" / "omniglot" / "omniglot_5w1s" / "baseline-nn" / "seed0" / "results.json"
VALIDATIONS = 2


def queue_line(name: str) -> tuple[str, ...]:
    """The overrides of one line of the converged queue (its ``@common`` ones first)."""
    runs = run_queue.read_queue(PROJECT_ROOT / "scripts" / "omniglot_converged.txt")
    return next(run.overrides for run in runs if run.name == name)


@requires_omniglot
def test_a_queue_line_trained_again_reproduces_its_committed_validations_exactly(tmp_path: Path):
    committed = json.loads(COMMITTED.read_text())
    assert committed["run_name"] == LINE
    assert committed["config"]["callbacks"]["cpu_budget"]["minutes"] is None, "a run capped in steps, not CPU time"
    expected = committed["val_history"][:VALIDATIONS]
    overrides = [o for o in queue_line(LINE) if not o.startswith("trainer.max_steps=")]
    steps = expected[-1]["step"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", OMNIGLOT_ENV: str(omniglot_root())}
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *overrides, f"trainer.max_steps={steps}", "test=false",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((tmp_path / "run" / "results.json").read_text())["val_history"]
    keys = ("step", "epoch", "acc", "ci95", "loss")
    assert [{k: v[k] for k in keys} for v in again] == [{k: v[k] for k in keys} for v in expected]
