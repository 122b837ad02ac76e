"""The shared network pieces' tests run on one thread, like the Meta-LSTM's (tiny tensors)."""

from tests.methods.meta_lstm.conftest import single_thread  # noqa: F401 - an autouse fixture
