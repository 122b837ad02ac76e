"""fewshot.quiet drops the known library notices and nothing else."""

import logging
import warnings

import pytest

from fewshot.quiet import DropAdverts, silence_library_noise


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
