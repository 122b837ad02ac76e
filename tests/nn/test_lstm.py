import pytest
import torch

from fewshot.nn.lstm import CoordinateLSTM

N = 1000  # coordinates; block_size 384 leaves a ragged last block


def unroll(lstm: CoordinateLSTM, xs, shared, fused: bool, readouts):
    """Loss of a few chained steps, so state gradients flow through every step."""
    state, loss = None, 0.0
    for t, (x, s) in enumerate(zip(xs, shared, strict=True)):
        if fused:
            state = lstm(x, state, shared=s)
            h, c = state
        else:
            inputs = torch.cat([s.expand(x.shape[1], -1), x.t()], dim=1)
            state = lstm.reference(inputs, state)
            h, c = state[0].t(), state[1].t()
        loss = loss + (h * readouts[t]).sum() + 0.5 * (c * readouts[t]).sum()
    return loss, h, c


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_fused_step_matches_reference_values_and_gradients(dtype, tol):
    torch.manual_seed(0)
    lstm = CoordinateLSTM(4, 20, block_size=384).to(dtype)
    nn_init = [p.detach().clone() for p in lstm.parameters()]
    with torch.no_grad():  # larger weights than the 0.01 init so that every path matters
        for p in lstm.parameters():
            p.uniform_(-0.5, 0.5)
    assert not any(torch.equal(a, b) for a, b in zip(nn_init, lstm.parameters(), strict=True))
    steps = 3
    xs = [torch.randn(2, N, dtype=dtype) for _ in range(steps)]
    shared = [torch.randn(2, dtype=dtype) for _ in range(steps)]
    readouts = [torch.randn(20, N, dtype=dtype) for _ in range(steps)]

    results = {}
    for fused in (True, False):
        lstm.zero_grad()
        loss, h, c = unroll(lstm, xs, shared, fused, readouts)
        loss.backward()
        results[fused] = (h.detach(), c.detach(), [p.grad.clone() for p in lstm.parameters()])
    (h1, c1, g1), (h2, c2, g2) = results[True], results[False]
    torch.testing.assert_close(h1, h2, rtol=tol, atol=tol)
    torch.testing.assert_close(c1, c2, rtol=tol, atol=tol)
    for a, b in zip(g1, g2, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())


def test_fused_step_gradients_wrt_initial_state():
    torch.manual_seed(1)
    lstm = CoordinateLSTM(4, 5, block_size=7).double()
    x = torch.randn(3, 20, dtype=torch.float64)
    shared = torch.randn(1, dtype=torch.float64)
    h0 = torch.randn(5, 20, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(5, 20, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 20, dtype=torch.float64)
    h, c = lstm(x, (h0, c0), shared=shared)
    dh0, dc0 = torch.autograd.grad((h * w).sum() + (c * w).sum(), (h0, c0))
    inputs = torch.cat([shared.expand(20, 1), x.t()], dim=1)
    h_ref, c_ref = lstm.reference(inputs, (h0.t(), c0.t()))
    dh0_ref, dc0_ref = torch.autograd.grad((h_ref.t() * w).sum() + (c_ref.t() * w).sum(), (h0, c0))
    torch.testing.assert_close(dh0, dh0_ref)
    torch.testing.assert_close(dc0, dc0_ref)


def test_reference_is_a_standard_lstm_cell():
    torch.manual_seed(2)
    lstm = CoordinateLSTM(4, 20)
    with torch.no_grad():
        for p in lstm.parameters():
            p.uniform_(-0.5, 0.5)
    cell = lstm.to_lstm_cell()
    x = torch.randn(50, 4)
    state = (torch.randn(50, 20), torch.randn(50, 20))
    for ours, theirs in zip(lstm.reference(x, state), cell(x, state), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_fused_step_refuses_a_differentiable_input():
    lstm = CoordinateLSTM(4, 3)
    x = torch.randn(4, 10, requires_grad=True)
    with pytest.raises(RuntimeError, match="constant"):
        lstm(x)


def test_differentiable_input_gradient_matches_reference():
    """A stacked layer (``differentiable_input=True``) backpropagates into its input, over a
    ragged last block and with and without a previous state."""
    torch.manual_seed(3)
    lstm = CoordinateLSTM(6, 5, block_size=7, differentiable_input=True).double()
    with torch.no_grad():
        for p in lstm.parameters():
            p.uniform_(-0.5, 0.5)
    for state in (None, (torch.randn(5, 20, dtype=torch.float64), torch.randn(5, 20, dtype=torch.float64))):
        x = torch.randn(6, 20, dtype=torch.float64, requires_grad=True)
        w = torch.randn(5, 20, dtype=torch.float64)
        h, c = lstm(x, state)
        (dx,) = torch.autograd.grad((h * w).sum() + (c * w).sum(), x)
        ref_state = None if state is None else (state[0].t(), state[1].t())
        h_ref, c_ref = lstm.reference(x.t(), ref_state)
        (dx_ref,) = torch.autograd.grad((h_ref.t() * w).sum() + (c_ref.t() * w).sum(), x)
        torch.testing.assert_close(dx, dx_ref)


def test_initialisation_range():
    lstm = CoordinateLSTM(4, 20)
    for p in lstm.parameters():
        assert p.abs().max() <= 0.01
        assert p.std() > 0.003  # uniform, not all zero
