"""The native CPU kernels compute the same function as the torch operations they replace."""

from __future__ import annotations

import ctypes
import math
import platform

import pytest
import torch

from fewshot.methods.meta_lstm import native
from fewshot.methods.meta_lstm.cell import MetaLearnerCell
from fewshot.methods.meta_lstm.lstm import CoordinateLSTM
from fewshot.methods.meta_lstm.metalearner import MetaLearner
from fewshot.methods.meta_lstm.preprocess import preprocess
from tests.methods.meta_lstm.test_lstm import unroll
from tests.methods.meta_lstm.test_metalearner import random_episode, tiny_conv4

needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler: native kernels cannot be built here")
N = 5000  # coordinates; block_size 1536 leaves a ragged last block


@needs_native
@pytest.mark.parametrize(("name", "reference"), [("sigmoid", torch.sigmoid), ("tanh", torch.tanh)])
def test_activations_are_accurate_to_a_float32_rounding(name, reference):
    special = torch.tensor([0.0, -0.0, 1e-30, 0.625])
    x = torch.cat([torch.linspace(-100, 100, 400_001), torch.randn(100_000) * 3, special])
    ours = getattr(native, name)(x).double()
    exact = reference(x.double())
    assert (ours - exact).abs().max() < 2e-7
    big = exact.abs() > 1e-6
    assert ((ours - exact)[big] / exact[big]).abs().max() < 3e-7


@needs_native
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_activations_propagate_nan_and_saturate_at_infinity(name):
    out = getattr(native, name)(torch.tensor([float("nan"), float("inf"), -float("inf")]))
    assert out[0].isnan()
    assert out[1] == 1.0
    assert out[2] == (0.0 if name == "sigmoid" else -1.0) or (name == "sigmoid" and 0 <= out[2] < 1e-37)


def lstm_run(backend: str, checkpoint: bool, seed: int = 0):
    """Values and gradients of three chained steps with large weights (every path matters)."""
    torch.manual_seed(seed)
    lstm = CoordinateLSTM(4, 20, block_size=1536, backend=backend, checkpoint=checkpoint)
    with torch.no_grad():
        for p in lstm.parameters():
            p.uniform_(-0.5, 0.5)
    xs = [torch.randn(2, N) for _ in range(3)]
    shared = [torch.randn(2) for _ in range(3)]
    readouts = [torch.randn(20, N) for _ in range(3)]
    loss, h, c = unroll(lstm, xs, shared, True, readouts)
    loss.backward()
    return h.detach(), c.detach(), [p.grad.clone() for p in lstm.parameters()]


@needs_native
@pytest.mark.parametrize("checkpoint", [False, True])
def test_native_lstm_step_matches_torch_operations(checkpoint):
    (h1, c1, g1), (h2, c2, g2) = lstm_run("native", checkpoint), lstm_run("torch", checkpoint)
    torch.testing.assert_close(h1, h2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c1, c2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("backend", [pytest.param("native", marks=needs_native), "torch"])
def test_checkpointing_gives_bitwise_the_same_result(monkeypatch, backend):
    """Recomputing the gates in the backward reruns the same operations on the same inputs (the
    two-pass kernels; the one-pass ones are checked against them below)."""
    monkeypatch.setattr(native, "fused_step_pays", lambda: False)
    (h1, c1, g1), (h2, c2, g2) = lstm_run(backend, False), lstm_run(backend, True)
    assert torch.equal(h1, h2) and torch.equal(c1, c2)
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


def one_pass_calls(monkeypatch) -> list[str]:
    """Spy on the one-pass kernels: the names of those called, in order."""
    calls = []
    for name in ("fused_step_forward", "fused_step_backward"):
        kernel = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    return calls


def assert_same_lstm_run(ours, reference):
    (h1, c1, g1), (h2, c2, g2) = ours, reference
    torch.testing.assert_close(h1, h2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c1, c2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


@needs_native
@pytest.mark.skipif(not native.fused_step_pays(), reason="the one-pass kernels are used only where built with AVX-512")
def test_checkpointing_with_the_one_pass_kernels_matches_kept_gates(monkeypatch):
    """checkpoint=True: one-pass forward, gates recomputed in the one-pass backward."""
    kept = lstm_run("native", False)
    calls = one_pass_calls(monkeypatch)
    assert_same_lstm_run(lstm_run("native", True), kept)
    assert calls == ["fused_step_forward"] * 3 + ["fused_step_backward"] * 12  # 3 steps x 4 blocks of 1536


@needs_native
def test_native_lstm_takes_broadcast_output_gradients():
    """``h.sum().backward()`` hands the step an expanded (stride-0) gradient."""
    lstm = CoordinateLSTM(4, 3, backend="native")
    x, shared = torch.randn(2, 50), torch.randn(2)
    lstm(x, shared=shared)[0].sum().backward()
    broadcast = [p.grad.clone() for p in lstm.parameters()]
    lstm.zero_grad()
    h = lstm(x, shared=shared)[0]
    h.backward(torch.ones_like(h))
    for a, b in zip(broadcast, (p.grad for p in lstm.parameters()), strict=True):
        assert torch.equal(a, b) and a.abs().max() > 0


def cell_run(backend: str, feedback: str, dtype=torch.float32):
    torch.manual_seed(3)
    cell = MetaLearnerCell(20, feedback=feedback, backend=backend)
    with torch.no_grad():  # leave the saturated initial regime so every path matters
        for p in cell.parameters():
            p.uniform_(-0.5, 0.5)
    cell = cell.to(dtype)
    n = 3000  # float32 draws, then converted: both runs see the same numbers
    h = torch.randn(20, n).to(dtype).requires_grad_(True)
    theta = torch.randn(n).to(dtype).requires_grad_(True)
    grad = torch.randn(n).to(dtype)
    states = [torch.randn(n).to(dtype).requires_grad_(True) for _ in range(2)]
    out = cell(h, theta, grad, *states)
    weights = [torch.randn(n).to(dtype) for _ in range(5)]
    loss = sum((o * w).sum() for o, w in zip(out, weights, strict=True))
    leaves = [h, theta, *states, *cell.parameters()]
    return [o.detach() for o in out], torch.autograd.grad(loss, leaves)


@needs_native
@pytest.mark.parametrize("feedback", ["preactivation", "gate"])
def test_native_cell_matches_the_reference_step(feedback):
    (out1, g1), (out2, g2) = cell_run("native", feedback), cell_run("torch", feedback, torch.float64)
    for a, b in zip(out1, out2, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("feedback", ["preactivation", "gate"])
def test_fused_torch_cell_matches_the_plain_reference(feedback):
    """The cell's hand-written backward (torch backend) against autograd through ``reference``."""
    torch.manual_seed(4)
    cell = MetaLearnerCell(6, feedback=feedback, backend="torch").double()
    with torch.no_grad():
        for p in cell.parameters():
            p.uniform_(-0.5, 0.5)
    h = torch.randn(6, 40, dtype=torch.float64, requires_grad=True)
    theta, i_prev, f_prev = (torch.randn(40, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grad = torch.randn(40, dtype=torch.float64)
    weights = [torch.randn(40, dtype=torch.float64) for _ in range(5)]
    leaves = [h, theta, i_prev, f_prev, *cell.parameters()]
    results = []
    for out in (cell(h, theta, grad, i_prev, f_prev), cell.reference(h.t(), theta, grad, i_prev, f_prev)):
        loss = sum((o * w).sum() for o, w in zip(out, weights, strict=True))
        results.append(([o.detach() for o in out], torch.autograd.grad(loss, leaves)))
    (out1, g1), (out2, g2) = results
    for a, b in zip(out1 + list(g1), out2 + list(g2), strict=True):
        torch.testing.assert_close(a, b)


@needs_native
def test_meta_gradients_agree_between_backends():
    episode = random_episode()
    grads, gates = {}, {}
    for backend in ("native", "torch"):
        torch.manual_seed(0)
        meta = MetaLearner(tiny_conv4(), n_steps=3, backend=backend)
        loss = meta.meta_loss(*episode).loss
        grads[backend] = (loss.detach(), torch.autograd.grad(loss, list(meta.parameters())))
        gates[backend] = meta.meta_loss(*episode).gates.values
    (l1, g1), (l2, g2) = grads["native"], grads["torch"]
    torch.testing.assert_close(l1, l2)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * max(1.0, b.abs().max().item()))
    torch.testing.assert_close(gates["native"], gates["torch"], rtol=1e-4, atol=1e-6)
    assert gates["torch"][:, :, 1].abs().max() > 0  # the stds are not all zero


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="'auto', 'native' or 'torch'"):
        CoordinateLSTM(4, 3, backend="fast")
    with pytest.raises(ValueError, match="'auto', 'native' or 'torch'"):
        MetaLearnerCell(3, backend="cuda")


def test_native_backend_refuses_float64_and_auto_falls_back():
    lstm = CoordinateLSTM(4, 3, backend="native").double()
    with pytest.raises(ValueError, match="float32 tensors on the CPU"):
        lstm(torch.randn(2, 10, dtype=torch.float64), shared=torch.randn(2, dtype=torch.float64))
    lstm.backend = "auto"
    h, _ = lstm(torch.randn(2, 10, dtype=torch.float64), shared=torch.randn(2, dtype=torch.float64))
    assert h.dtype == torch.float64


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A process where the kernels are not cached and no compiler exists."""
    monkeypatch.setenv("FEWSHOT_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    native.load.cache_clear()
    yield
    native.load.cache_clear()


def test_without_a_compiler_auto_warns_once_and_uses_torch(no_compiler):
    with pytest.warns(UserWarning, match="Native Meta-LSTM kernels unavailable.*no C compiler"):
        assert native.load() is None
    lstm = CoordinateLSTM(4, 3, backend="auto")
    h, c = lstm(torch.randn(2, 10), shared=torch.randn(2))
    assert h.shape == c.shape == (3, 10)
    strict = CoordinateLSTM(4, 3, backend="native")
    with pytest.raises(RuntimeError, match="could not be built"):
        strict(torch.randn(2, 10), shared=torch.randn(2))


@needs_native
def test_a_failing_build_reports_the_compiler_message(monkeypatch, tmp_path):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C;\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    with pytest.raises(RuntimeError, match="failed"):
        native.build(tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-written is left to load


@needs_native
def test_build_is_cached_by_content(tmp_path):
    first = native.build(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert native.build(tmp_path) == first and first.stat().st_mtime_ns == mtime
    assert first.name.startswith("lstm_kernels-") and first.suffix == ".so"


def inference_and_training_forward(monkeypatch, n: int = 5000):
    """Three chained steps without autograd (the one-pass inference kernel) and with it (matrix
    product + pointwise kernel), on the same inputs; large weights so every path matters."""
    calls = []
    one_pass = native.fused_step_forward
    monkeypatch.setattr(native, "fused_step_forward", lambda *a: calls.append(1) or one_pass(*a))
    torch.manual_seed(5)
    lstm = CoordinateLSTM(4, 20, backend="native")
    with torch.no_grad():
        for p in lstm.parameters():
            p.uniform_(-0.5, 0.5)
    xs, shared = [torch.randn(2, n) for _ in range(3)], [torch.randn(2) for _ in range(3)]
    runs = []
    for grad in (False, True):
        state = None
        with torch.set_grad_enabled(grad):
            for x, s in zip(xs, shared, strict=True):
                state = lstm(x, state, shared=s)
        runs.append(tuple(t.detach() for t in state))
    return runs, len(calls)


@needs_native
@pytest.mark.skipif(not native.fused_step_pays(), reason="the one-pass kernel is used only where built with AVX-512")
@pytest.mark.parametrize("n", [5000, 256, 17])
def test_one_pass_inference_step_matches_the_training_forward(monkeypatch, n):
    ((h1, c1), (h2, c2)), calls = inference_and_training_forward(monkeypatch, n)
    assert calls == 3  # the no-grad steps took the one-pass kernel, the others did not
    torch.testing.assert_close(h1, h2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c1, c2, rtol=1e-5, atol=1e-6)
    assert h1.abs().max() > 0.1


@needs_native
def test_one_pass_inference_step_propagates_nan():
    lstm = CoordinateLSTM(4, 20, backend="native")
    x = torch.randn(2, 300)
    x[1, 123] = float("nan")
    with torch.no_grad():
        h, c = lstm(x, lstm(torch.randn(2, 300), shared=torch.randn(2)), shared=torch.randn(2))
    assert h[:, 123].isnan().all() and c[:, 123].isnan().all()
    assert h.isnan().sum() == 20 and c.isnan().sum() == 20


@needs_native
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction-set levels")
@pytest.mark.parametrize("march", ["x86-64", "x86-64-v3"])
def test_kernels_built_without_avx512_compute_the_same(monkeypatch, tmp_path, march):
    """The portable code paths (no AVX-512): activations and the one-pass step, called directly."""
    flags = ("-O3", f"-march={march}", "-fopenmp", "-fPIC", "-shared")
    library = native.declare(ctypes.CDLL(str(native.build(tmp_path, flags))))
    assert library.lstm_fused_forward_vectorised() == 0
    x = torch.linspace(-30, 30, 20_001)
    for name, reference in (("sigmoid", torch.sigmoid), ("tanh", torch.tanh)):
        out = torch.empty_like(x)
        getattr(library, f"fs_{name}_array")(x.numel(), x.data_ptr(), out.data_ptr())
        assert (out.double() - reference(x.double())).abs().max() < 2e-7
    monkeypatch.setattr(native, "load", lambda: library)
    monkeypatch.setattr(native, "fused_step_pays", lambda: True)  # force the one-pass kernels
    ((h1, c1), (h2, c2)), calls = inference_and_training_forward(monkeypatch, 1000)
    assert calls == 3
    torch.testing.assert_close(h1, h2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c1, c2, rtol=1e-5, atol=1e-6)
    assert_same_lstm_run(lstm_run("native", True), lstm_run("torch", False))  # the one-pass backward


@needs_native
def test_native_preprocessing_matches_the_torch_code():
    threshold = math.exp(-10.0)
    special = [0.0, -0.0, 1e-45, -1e-40, threshold, -threshold, threshold * 1.0001, threshold * 0.9999]
    special += [1e38, -3.4e38, float("inf"), -float("inf"), float("nan"), 1.0, -1.0, 2.0**-126]
    x = torch.cat([torch.tensor(special), torch.randn(20_000) * torch.logspace(-12, 3, 20_000)])
    ours, theirs = native.preprocess(x, 10.0), preprocess(x, 10.0, dim=0)
    assert ours.shape == theirs.shape == (2, x.numel())
    torch.testing.assert_close(ours, theirs, rtol=2e-7, atol=3e-7, equal_nan=True)
    assert ours[0, 12] == -1.0 and ours[1, 12].isnan()  # NaN: the linear branch, as the torch code
    assert ours[0, 11] == float("inf") and ours[1, 11] == -1.0  # -inf


@needs_native
def test_segment_moments_match_std_mean_even_for_gates_near_one():
    torch.manual_seed(1)
    x = torch.stack([torch.rand(10_000), 1.0 - 1e-4 * torch.rand(10_000)])  # a forget gate near 1
    sizes = [1, 999, 5000, 4000]
    offsets = torch.tensor([0, *sizes], dtype=torch.int64).cumsum(0)
    ours = native.segment_moments(x, offsets)
    for s, segment in enumerate(x.double().split(sizes, dim=1)):
        std, mean = torch.std_mean(segment, dim=1, correction=0)
        torch.testing.assert_close(ours[:, 0, s], mean.float(), rtol=1e-6, atol=0)
        torch.testing.assert_close(ours[:, 1, s], std.float(), rtol=1e-4, atol=1e-9)
    assert ours[1, 1, 2] < 1e-4 and ours[:, 1, 0].eq(0).all()  # one coordinate: std 0


@needs_native
@pytest.mark.parametrize("offsets", [[0, 5, 5, 10], [0, 11], [-1, 10], [0, 4, 2]])
def test_segment_moments_refuse_bad_offsets(offsets):
    with pytest.raises(ValueError, match="offsets"):
        native.segment_moments(torch.rand(2, 10), torch.tensor(offsets))
