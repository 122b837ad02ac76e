"""The native C++ kernels compute the same function as the torch operations they replace,
refuse bad inputs with clear errors, and the operators whose CPU kernels run them (composite
implementation elsewhere) pass torch's operator checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fewshot.methods.meta_lstm.cell import MetaLearnerCell
from fewshot.methods.meta_lstm.metalearner import MetaLearner, segment_moments
from fewshot.nn import native
from fewshot.nn.lstm import CPU_BLOCK_SIZE, CoordinateLSTM
from tests.methods.meta_lstm.test_metalearner import random_episode, tiny_conv4
from tests.nn.test_lstm import unroll

needs_native = pytest.mark.skipif(not native.available(), reason="no C++ compiler: native operators cannot be built")
N = 5000  # coordinates; block_size 1536 leaves a ragged last block
REPO = Path(__file__).resolve().parents[3]


def activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The operators' float32 sigmoid and tanh of ``x`` (a step with one unit whose four gate
    pre-activations are ``x``: the kept gates are sigmoid, sigmoid, sigmoid, tanh)."""
    gates = x.to(torch.float32).reshape(1, -1).repeat(4, 1)
    c, h, tanh_c = (torch.empty(1, gates.shape[1]) for _ in range(3))
    native.kernels().lstm_gates_forward(gates, None, c, h, tanh_c)
    return gates[0], gates[3]


@needs_native
def test_the_build_uses_the_chosen_instruction_set():
    assert native.kernels().vector_isa() == native.capability().lower()


@needs_native
@pytest.mark.parametrize(("index", "reference"), [(0, torch.sigmoid), (1, torch.tanh)])
def test_activations_are_accurate_to_a_float32_rounding(index, reference):
    special = torch.tensor([0.0, -0.0, 1e-30, 0.625])
    x = torch.cat([torch.linspace(-100, 100, 400_001), torch.randn(100_000) * 3, special])
    ours = activations(x)[index].double()
    exact = reference(x.double())
    assert (ours - exact).abs().max() < 2e-7
    big = exact.abs() > 1e-6
    assert ((ours - exact)[big] / exact[big]).abs().max() < 3e-7


@needs_native
def test_activations_propagate_nan_and_saturate_at_infinity():
    sigmoid, tanh = activations(torch.tensor([float("nan"), float("inf"), -float("inf")]))
    assert sigmoid[0].isnan() and tanh[0].isnan()
    assert sigmoid[1] == 1.0 and tanh[1] == 1.0
    assert 0 <= sigmoid[2] < 1e-37 and tanh[2] == -1.0


@needs_native
def test_native_lstm_step_propagates_nan_with_and_without_autograd():
    lstm = CoordinateLSTM(4, 20)
    x = torch.randn(2, 300)
    x[1, 123] = float("nan")
    for grad in (False, True):
        with torch.set_grad_enabled(grad), native.selected("native"):
            h, c = lstm(x, lstm(torch.randn(2, 300), shared=torch.randn(2)), shared=torch.randn(2))
        assert h[:, 123].isnan().all() and c[:, 123].isnan().all()
        assert h.isnan().sum() == 20 and c.isnan().sum() == 20


@needs_native
def test_inference_step_matches_the_training_forward():
    """No autograd (nothing kept) and autograd (gates kept) give the same values."""
    torch.manual_seed(5)
    lstm = CoordinateLSTM(4, 20, block_size=1536)
    with torch.no_grad():
        for p in lstm.parameters():
            p.uniform_(-0.5, 0.5)
    xs, shared = [torch.randn(2, N) for _ in range(3)], [torch.randn(2) for _ in range(3)]
    runs = []
    for grad in (False, True):
        state = None
        with torch.set_grad_enabled(grad), native.selected("native"):
            for x, s in zip(xs, shared, strict=True):
                state = lstm(x, state, shared=s)
        runs.append(tuple(t.detach() for t in state))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0].abs().max() > 0.1


def lstm_run(backend: str, checkpoint: bool, seed: int = 0):
    """Values and gradients of three chained steps with large weights (every path matters), with
    the CPU kernels running ``backend``."""
    torch.manual_seed(seed)
    lstm = CoordinateLSTM(4, 20, block_size=1536, checkpoint=checkpoint)
    with torch.no_grad():
        for p in lstm.parameters():
            p.uniform_(-0.5, 0.5)
    xs = [torch.randn(2, N) for _ in range(3)]
    shared = [torch.randn(2) for _ in range(3)]
    readouts = [torch.randn(20, N) for _ in range(3)]
    with native.selected(backend):
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
def test_checkpointing_gives_bitwise_the_same_result(backend):
    """Recomputing the gates in the backward reruns the same operations on the same inputs."""
    (h1, c1, g1), (h2, c2, g2) = lstm_run(backend, False), lstm_run(backend, True)
    assert torch.equal(h1, h2) and torch.equal(c1, c2)
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


def assert_same_lstm_run(ours, reference):
    (h1, c1, g1), (h2, c2, g2) = ours, reference
    torch.testing.assert_close(h1, h2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c1, c2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


@needs_native
def test_native_lstm_takes_broadcast_output_gradients():
    """``h.sum().backward()`` hands the step an expanded (stride-0) gradient."""
    lstm = CoordinateLSTM(4, 3)
    x, shared = torch.randn(2, 50), torch.randn(2)
    with native.selected("native"):
        lstm(x, shared=shared)[0].sum().backward()
        broadcast = [p.grad.clone() for p in lstm.parameters()]
        lstm.zero_grad()
        h = lstm(x, shared=shared)[0]
        h.backward(torch.ones_like(h))
    for a, b in zip(broadcast, (p.grad for p in lstm.parameters()), strict=True):
        assert torch.equal(a, b) and a.abs().max() > 0


def cell_run(backend: str, feedback: str, dtype=torch.float32):
    torch.manual_seed(3)
    cell = MetaLearnerCell(20, feedback=feedback)
    with torch.no_grad():  # leave the saturated initial regime so every path matters
        for p in cell.parameters():
            p.uniform_(-0.5, 0.5)
    cell = cell.to(dtype)
    n = 3000  # float32 draws, then converted: both runs see the same numbers
    h = torch.randn(20, n).to(dtype).requires_grad_(True)
    theta = torch.randn(n).to(dtype).requires_grad_(True)
    grad = torch.randn(n).to(dtype)
    states = [torch.randn(n).to(dtype).requires_grad_(True) for _ in range(2)]
    with native.selected(backend):
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
    """The cell's hand-written backward (composite, float64) against autograd through ``reference``."""
    torch.manual_seed(4)
    cell = MetaLearnerCell(6, feedback=feedback).double()
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
        meta = MetaLearner(tiny_conv4(), n_steps=3)
        with native.selected(backend):
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
        native.select("fast")
    with pytest.raises(ValueError, match="'auto', 'native' or 'torch'"), native.selected("cuda"):
        pass
    assert native.select("auto") == "auto"  # nothing was changed by the refusals


@needs_native
def test_native_backend_refuses_float64_and_auto_falls_back():
    lstm = CoordinateLSTM(4, 3).double()
    x, shared = torch.randn(2, 10, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    with native.selected("native"), pytest.raises(ValueError, match="needs float32 tensors, got torch.float64"):
        lstm(x, shared=shared)
    h, _ = lstm(x, shared=shared)
    assert h.dtype == torch.float64


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A process where the operators are not cached and no compiler exists."""
    monkeypatch.setenv("FEWSHOT_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    native.load.cache_clear()
    yield
    native.load.cache_clear()


def test_without_a_compiler_auto_warns_once_and_uses_torch(no_compiler):
    with pytest.warns(UserWarning, match=r"Native Meta-LSTM operators unavailable.*no C\+\+ compiler.*backend=torch"):
        assert native.load() is None
    lstm = CoordinateLSTM(4, 3)
    h, c = lstm(torch.randn(2, 10), shared=torch.randn(2))
    assert h.shape == c.shape == (3, 10)
    with pytest.raises(RuntimeError, match="could not be built"):
        native.select("native")
    with pytest.raises(RuntimeError, match="could not be built"):
        native.kernels()


@needs_native
def test_a_failing_build_reports_the_compiler_message(monkeypatch, tmp_path):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++;\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    with pytest.raises(RuntimeError, match="(?s)broken.cpp failed.*error"):
        native.build(tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())  # nothing half-written is left to load


@needs_native
def test_build_is_cached_by_content():
    first = native.load()
    mtime = first.stat().st_mtime_ns
    assert native.build() == first and first.stat().st_mtime_ns == mtime
    assert first.name.startswith(f"fewshot_lstm_ops_{native.capability().lower()}_") and first.suffix == ".so"


def test_segment_moments_match_std_mean_even_for_gates_near_one():
    torch.manual_seed(1)
    x = torch.stack([torch.rand(10_000), 1.0 - 1e-4 * torch.rand(10_000)])  # a forget gate near 1
    sizes = [1, 999, 5000, 4000]
    ours = segment_moments(x, sizes)
    assert ours.shape == (2, 2, 4)
    for s, segment in enumerate(x.double().split(sizes, dim=1)):
        std, mean = torch.std_mean(segment, dim=1, correction=0)
        torch.testing.assert_close(ours[:, 0, s], mean.float(), rtol=1e-6, atol=0)
        torch.testing.assert_close(ours[:, 1, s], std.float(), rtol=1e-4, atol=1e-9)
    assert ours[1, 1, 2] < 1e-4 and ours[:, 1, 0].eq(0).all()  # one coordinate: std 0


# ---- Bad inputs: a clear RuntimeError naming the tensor, never a crash.


def gate_inputs(hidden: int = 3, m: int = 40) -> dict[str, torch.Tensor]:
    return {
        "gates": torch.randn(4 * hidden, m),
        "c_prev": torch.randn(hidden, m),
        "c": torch.empty(hidden, m),
        "h": torch.empty(hidden, m),
        "tanh_c": torch.empty(hidden, m),
    }


@needs_native
@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("gates", lambda t: t.double(), "gates must be float32"),
        ("c_prev", lambda t: t.to(torch.float16), "c_prev must be float32"),
        ("gates", lambda t: t[:-1], r"gates must be \[12, 40\]"),
        ("c_prev", lambda t: t[:, :-1], r"c_prev must be \[3, 40\]"),
        ("h", lambda t: t.reshape(-1), r"h must be \[3, 40\]"),
        ("c", lambda t: torch.empty(t.shape[1], t.shape[0]).t(), "c must have contiguous rows"),
        ("tanh_c", lambda t: t[:, ::2].repeat_interleave(2, 1)[:, :40].t().contiguous().t(), "contiguous rows"),
    ],
)
def test_the_gate_operators_refuse_bad_inputs(name, bad, message):
    inputs = gate_inputs()
    inputs[name] = bad(inputs[name])
    with pytest.raises(RuntimeError, match=message):
        native.kernels().lstm_gates_forward(**inputs)


@needs_native
def test_the_gate_backward_refuses_mismatched_gradients():
    hidden, m = 3, 40
    args = dict(gates=torch.rand(4 * hidden, m), tanh_c=torch.rand(hidden, m), c_prev=None, dc_next=None)
    with pytest.raises(RuntimeError, match=r"dh must be \[3, 40\]"):
        native.kernels().lstm_gates_backward(
            **args, dh=torch.rand(hidden, m + 1), d_pre=torch.empty(4 * hidden, m), dc_prev=None
        )
    with pytest.raises(RuntimeError, match="d_pre must be float32"):
        native.kernels().lstm_gates_backward(
            **args, dh=torch.rand(hidden, m), d_pre=torch.empty(4 * hidden, m, dtype=torch.float64), dc_prev=None
        )


@needs_native
def test_the_cell_operators_refuse_bad_inputs():
    hidden, n = 4, 30
    h, weight, bias = torch.randn(hidden, n), torch.randn(2, hidden + 2), torch.randn(2)
    vectors = [torch.randn(n) for _ in range(4)]
    cell = native.kernels().meta_cell_forward
    with pytest.raises(RuntimeError, match=r"weight must be \[2, 6\]"):
        cell(h, *vectors, torch.randn(2, hidden + 1), bias, True)
    with pytest.raises(RuntimeError, match=r"theta must be \[30\]"):
        cell(h, vectors[0][:-1], *vectors[1:], weight, bias, True)
    with pytest.raises(RuntimeError, match="grad must be contiguous"):
        cell(h, vectors[0], torch.randn(2 * n)[::2], *vectors[2:], weight, bias, True)
    with pytest.raises(RuntimeError, match="h must be float32"):
        cell(h.double(), *vectors, weight, bias, True)
    with pytest.raises(RuntimeError, match=r"bias must be \[2\]"):
        cell(h, *vectors, weight, torch.randn(3), True)


def test_only_registered_operators_carry_the_fewshot_namespace():
    """One operator per step and direction; the C++ kernels are not operators of their own."""
    ops = {name for name in dir(torch.ops.fewshot) if not name.startswith("_") and name != "name"}
    assert ops >= {"lstm_step", "lstm_step_backward", "meta_cell_step", "meta_cell_step_backward"}
    assert not ops & {"lstm_gates_forward", "lstm_gates_backward", "meta_cell_forward", "meta_cell_backward"}


def test_other_devices_take_the_composite_implementation():
    """Dispatch sends tensors on another device past the CPU kernel, even with ``native`` selected."""
    lstm, cell = CoordinateLSTM(4, 3).to("meta"), MetaLearnerCell(3).to("meta")
    with native.selected("auto"):
        h, c = lstm(torch.randn(2, 10, device="meta"), shared=torch.randn(2, device="meta"))
        theta = cell(h, *(torch.empty(10, device="meta") for _ in range(4))).theta
    assert h.device.type == c.device.type == theta.device.type == "meta" and theta.shape == (10,)


# ---- torch.library.opcheck: schema, fake (meta) kernels, autograd registration.


def lstm_step_args(keep: bool, with_state: bool = True):
    torch.manual_seed(0)
    hidden, n = 3, 70
    x = torch.randn(2, n)
    h, c = (torch.randn(hidden, n, requires_grad=True) for _ in range(2)) if with_state else (None, None)
    w_x, w_h = torch.randn(4 * hidden, 2, requires_grad=True), torch.randn(4 * hidden, hidden, requires_grad=True)
    return (x, h, c, w_x, w_h, torch.randn(4 * hidden, requires_grad=True), 32, keep)


def cell_step_args(feed_preactivation: bool):
    torch.manual_seed(0)
    hidden, n = 4, 50
    h = torch.randn(hidden, n, requires_grad=True)
    theta, i_prev, f_prev = (torch.randn(n, requires_grad=True) for _ in range(3))
    weight, bias = torch.randn(2, hidden + 2, requires_grad=True), torch.randn(2, requires_grad=True)
    return (h, theta, torch.randn(n), i_prev, f_prev, weight, bias, feed_preactivation)


BACKENDS = [pytest.param("native", marks=needs_native), "torch"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """What the operators' CPU kernels run during the test: the C++ kernels or the composite maths."""
    with native.selected(request.param):
        yield request.param


@pytest.mark.parametrize(("keep", "with_state"), [(True, True), (False, True), (True, False)])
def test_opcheck_lstm_step(backend, keep, with_state):
    torch.library.opcheck(torch.ops.fewshot.lstm_step.default, lstm_step_args(keep, with_state))


@pytest.mark.parametrize("feed_preactivation", [True, False])
def test_opcheck_meta_cell_step(backend, feed_preactivation):
    torch.library.opcheck(torch.ops.fewshot.meta_cell_step.default, cell_step_args(feed_preactivation))


def test_opcheck_the_backward_operators(backend):
    x, h, c, w_x, w_h, bias, *_ = (t.detach() if isinstance(t, torch.Tensor) else t for t in lstm_step_args(True))
    _, _, kept = torch.ops.fewshot.lstm_step(x, h, c, w_x, w_h, bias, 32, True)
    dh, dc = torch.randn_like(h), torch.randn_like(c)
    backward = (x, h, c, w_x, w_h, bias, kept, dh, dc, 32, True, True, True)
    torch.library.opcheck(torch.ops.fewshot.lstm_step_backward.default, backward)
    h, theta, grad, i_prev, f_prev, weight, _, feed = (
        t.detach() if isinstance(t, torch.Tensor) else t for t in cell_step_args(True)
    )
    n = theta.shape[0]
    gates = [torch.rand(n) for _ in range(2)]
    gradients = [torch.randn(n) for _ in range(4)] + [None]
    torch.library.opcheck(
        torch.ops.fewshot.meta_cell_step_backward.default,
        (h, theta, grad, i_prev, f_prev, *gates, weight, feed, gradients),
    )


# ---- Any strides the torch path takes: a broadcast upstream gradient on a block of one coordinate
# (n = 1, or n = CPU_BLOCK_SIZE + 1 leaving a last block of one), a broadcast hidden state.


@pytest.mark.parametrize("n", [1, CPU_BLOCK_SIZE + 1])
def test_opcheck_lstm_step_backward_with_a_broadcast_gradient(backend, n):
    x, h, c, w_x, w_h, bias, *_ = lstm_step_args(keep=True)
    hidden = w_h.shape[1]
    x, h, c = torch.randn(2, n), torch.randn(hidden, n), torch.randn(hidden, n)
    args = (x, h, c, w_x.detach(), w_h.detach(), bias.detach(), CPU_BLOCK_SIZE, True)
    _, _, kept = torch.ops.fewshot.lstm_step(*args)
    broadcast = torch.ones(()).expand(hidden, n)  # what h.sum().backward() sends: strides [0, 0]
    backward = (*args[:6], kept, broadcast, broadcast, CPU_BLOCK_SIZE, True, True, True)
    torch.library.opcheck(torch.ops.fewshot.lstm_step_backward.default, backward)
    torch.library.opcheck(torch.ops.fewshot.lstm_step.default, (x, h.requires_grad_(), c, *args[3:]))


@needs_native
@pytest.mark.parametrize("n", [1, CPU_BLOCK_SIZE + 1])
def test_native_backward_of_a_summed_output_matches_torch(n):
    grads = {}
    for backend in ("native", "torch"):
        torch.manual_seed(0)
        lstm = CoordinateLSTM(4, 3)
        with native.selected(backend):
            state = lstm(torch.randn(2, n), shared=torch.randn(2))
            h, c = lstm(torch.randn(2, n), state, shared=torch.randn(2))
            (h.sum() + c.sum()).backward()
        grads[backend] = (lstm.weight.grad, lstm.bias.grad)
    for native_grad, torch_grad in zip(*grads.values()):
        torch.testing.assert_close(native_grad, torch_grad, rtol=1e-4, atol=1e-5)


def test_opcheck_meta_cell_step_with_a_broadcast_hidden_state(backend):
    h, *rest = cell_step_args(feed_preactivation=True)
    broadcast = h.detach()[:, :1].expand_as(h).requires_grad_()  # strides [1, 0]
    torch.library.opcheck(torch.ops.fewshot.meta_cell_step.default, (broadcast, *rest))


# ---- torch.compile(fullgraph=True): the forward calls only registered operators (the build and
# loading happen when the module is built).


def test_the_lstm_and_the_cell_compile_in_one_graph(backend):
    torch.manual_seed(0)
    lstm = CoordinateLSTM(4, 3)
    cell = MetaLearnerCell(3)
    x, shared, n = torch.randn(2, 40), torch.randn(2), 40
    vectors = [torch.randn(n) for _ in range(4)]

    def step(x, shared, *vectors):
        h, _ = lstm(x, shared=shared)
        return cell(h, *vectors).theta

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, shared, *vectors), step(x, shared, *vectors))


# ---- The portable build: the whole file again on at::vec's scalar path.


@needs_native
@pytest.mark.skipif(native.capability() == "DEFAULT", reason="this build already is the scalar one")
@pytest.mark.skipif(os.environ.get("FEWSHOT_CPU_CAPABILITY") == "DEFAULT", reason="inside the portable run")
def test_the_portable_build_passes_these_tests(tmp_path):
    """Built with ``CPU_CAPABILITY`` default (no vector instruction set), in a fresh process (one
    process holds one build of the operators)."""
    env = os.environ | {"FEWSHOT_CPU_CAPABILITY": "DEFAULT", "FEWSHOT_KERNEL_CACHE": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__]
    command += ["-k", "not portable and not failing_build"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary
    assert list(tmp_path.glob("fewshot_lstm_ops_default_*.so"))


def test_model_backend_is_the_process_switch():
    """``model.backend`` selects what the CPU kernels run for the whole process (also the backward,
    which Lightning runs outside the method's own calls)."""
    from functools import partial

    from fewshot.methods.meta_lstm.method import MetaLSTM

    with native.selected("auto"):
        MetaLSTM(tiny_conv4(), optimizer=partial(torch.optim.Adam, lr=1e-3), inner_steps=1, backend="torch")
        assert not native.applies(torch.zeros(2))
        with pytest.raises(ValueError, match="'auto', 'native' or 'torch'"):
            MetaLSTM(tiny_conv4(), optimizer=partial(torch.optim.Adam, lr=1e-3), inner_steps=1, backend="fast")
    assert native.select("auto") == "auto"
