"""The Meta-LSTM bench reports what the performance work is judged by: layer 1's GFLOP/s beside a
plain matmul, each part's thread scaling, and the CPU it ran on."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from benchmarks.layer1 import measure
from fewshot.nn import native
from tests.conftest import PROJECT_ROOT


def test_layer1_reports_positive_gflops_for_the_step_and_for_plain_matmuls():
    result = measure(n=3000, hidden=5, repeats=2, clock=time.perf_counter)
    for key in ("forward", "backward", "matmul_forward", "matmul_backward"):
        assert result[f"{key}_ms"] > 0
        assert 0 < result[f"{key}_gflops"] < 1e5
    # GFLOP/s = FLOPs of the products / time: the forward's product is [4H, K] x [K, n], K = 2 + H + 1
    assert result["forward_gflops"] == pytest.approx(2 * 20 * 8 * 3000 / result["forward_ms"] / 1e6)


@pytest.mark.skipif(not native.available(), reason="no C++ compiler")
def test_the_bench_prints_the_cpu_thread_scaling_and_layer1(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "benchmarks.meta_lstm", "--shapes", "omniglot-5w1s-T5", "--repeats", "1"]
    command += ["--eval-episodes", "0", "--threads", "1", "2", "--out", str(out)]
    text = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout
    payload = json.loads(out.read_text())
    assert payload["cpu"] and text.startswith(payload["cpu"])
    assert "thread scaling" in text and "layer 1" in text
    (row,) = payload["scaling"]
    assert row["threads"] == 2
    assert all(row[part] > 0 for part in ("episode", "learner", "meta_forward", "meta_backward"))
    assert payload["layer1"]["forward_gflops"] > 0 and payload["layer1"]["matmul_backward_gflops"] > 0
