"""scripts/gpu_benchmarks.sh: valid shell, and every flag it passes exists in the benchmark it calls."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "gpu_benchmarks.sh"


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("module", ["benchmarks.maml", "benchmarks.meta_lstm"])
def test_every_flag_the_script_passes_is_an_option_of_the_benchmark(module):
    text = SCRIPT.read_text()
    call = text[text.index(f"python -m {module} ") :].split("2>&1")[0]
    flags = set(re.findall(r"(--[a-z][a-z-]*)", call))
    assert {"--device", "--repeats", "--out"} <= flags
    usage = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert flags <= set(re.findall(r"(--[a-z][a-z-]*)", usage)), flags - set(re.findall(r"(--[a-z][a-z-]*)", usage))
