"""benchmarks/gpu_check.sh --dry-run: the GPU check's whole sequence at tiny sizes on the CPU, so that
the script prepared for a GPU machine cannot rot unnoticed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # see the README: the fast lane leaves these out

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = (
    "0_setup",
    "1_pytest_gpu",
    "2_prepare_tiny_corpus",
    "2_fit",
    "3_throughput_b4",
    "3_throughput_packed",
    "3b_host_overhead",
    "4_compare_pipelines",
)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_dry_run_runs_every_step_and_writes_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, tail
    summary = (out / "summary.txt").read_text()
    statuses = dict(re.findall(r"^STEP (\S+) status=(\S+)", summary, re.M))
    assert set(statuses) == set(STEPS), summary
    assert all(status == "0" for status in statuses.values()), summary
    assert "FINISHED after" in summary and "every step exited 0" in summary, summary
    # the figures were extracted, not only the commands run
    assert re.search(r"fit: test accuracy \(test/acc\) [0-9.]+", summary), summary
    assert re.search(r"fit: median seconds per epoch [0-9.]+ over 1 epochs", summary), summary
    assert re.search(r"compare: \| \(a\) naive.*\n.*compare: \| \(b\).*\n.*compare: \| \(c\)", summary), summary
    assert "batch 4: bare PyTorch loop" in summary and "batch 4: peak GPU memory" in summary, summary
    assert re.search(r"packed: ratio packed / padded exact path \(bare loop\): [0-9.]+", summary), summary
    assert re.search(r"host overhead: fit / bare time per step: [0-9.]+", summary), summary
    logs = {"1_pytest_gpu.log", "2_fit.log", "3_train_throughput.log", "4_compare_pipelines.log", "summary.txt"}
    assert logs <= {path.name for path in out.iterdir()}
    assert not list(tmp_path.glob("gpu_check_work.*")), "the scratch folder was left behind"
