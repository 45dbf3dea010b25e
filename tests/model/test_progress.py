"""Progress lines reach the output of a process that configured no logging (a training process
started by TorchDistributor), with rate, ETA and the latest losses."""
from __future__ import annotations

import subprocess
import sys

SCRIPT = """
from training.progress import Progress, ensure_output
ensure_output()
p = Progress("train", 10, unit="examples", every_s=0)
p.update(256, {"ctr": 0.25})
"""


def test_progress_lines_without_logging_configuration() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    line = next(x for x in out.stderr.splitlines() if "training.progress" in x)
    assert "train: step 1/10" in line and "examples/s" in line and "ETA" in line and "ctr=0.2500" in line
