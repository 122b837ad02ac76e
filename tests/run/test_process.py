"""fewshot.run.process: retain_freed_memory stops glibc from handing freed blocks back (and faulting them in
again); silence_library_noise drops the known library notices and nothing else."""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
import warnings

import pytest

from fewshot.run.process import DropAdverts, silence_library_noise

SCRIPT = """
import resource, sys, torch
from fewshot.run.process import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def episode():  # 48 blocks of 4 MiB, all freed at the end, like a meta-graph
    return [torch.empty(2**20).fill_(1.0) for _ in range(48)]
episode()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    episode()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_episode(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc allocator setting")
def test_retained_memory_is_reused_without_page_faults():
    default, retained = faults_per_episode("default"), faults_per_episode("retain")
    assert default > 5_000  # 192 MiB freed and touched again: up to one fault per 4 KiB
    assert retained < default / 4


@pytest.fixture
def clean_filters():
    """Restore the warning filters and the Lightning logger's filters after the test."""
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    saved = list(logger.filters)
    with warnings.catch_warnings():
        yield logger
    logger.filters[:] = saved


def test_lightnings_treespec_deprecation_is_silenced_and_other_warnings_are_not(clean_filters):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=1)
        warnings.warn("your learning rate is NaN", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["your learning rate is NaN"]


def test_lightnings_tips_are_dropped_and_its_other_info_lines_kept(clean_filters, caplog):
    silence_library_noise()
    silence_library_noise()
    assert sum(isinstance(f, DropAdverts) for f in clean_filters.filters) == 1
    with caplog.at_level(logging.INFO, logger=clean_filters.name):
        clean_filters.info("💡 Tip: For seamless cloud logging ... try installing [litlogger]")
        clean_filters.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
