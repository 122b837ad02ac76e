import pytest
import torch

from fewshot.methods.meta_lstm.cell import MetaLearnerCell, cell_update


@pytest.mark.parametrize("feedback", ["preactivation", "gate"])
def test_fused_cell_matches_reference_values_and_gradients(feedback):
    torch.manual_seed(0)
    cell = MetaLearnerCell(hidden_size=6, feedback=feedback).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.uniform_(-1.0, 1.0)
    n = 50
    h = torch.randn(6, n, dtype=torch.float64, requires_grad=True)
    theta = torch.randn(n, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(n, dtype=torch.float64)
    i_prev = torch.randn(n, dtype=torch.float64, requires_grad=True)
    f_prev = torch.randn(n, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, n, dtype=torch.float64)
    leaves = [h, theta, i_prev, f_prev, *cell.parameters()]

    def loss(out):
        return sum((t * w[k]).sum() for k, t in enumerate(out))

    fused = cell(h, theta, grad, i_prev, f_prev)
    reference = cell.reference(h.t(), theta, grad, i_prev, f_prev)
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(
        torch.autograd.grad(loss(fused), leaves), torch.autograd.grad(loss(reference), leaves), strict=True
    ):
        torch.testing.assert_close(a, b)
    if feedback == "preactivation":
        torch.testing.assert_close(fused.input_gate, fused.input_state.sigmoid())
    else:
        assert torch.equal(fused.input_state, fused.input_gate)


def test_gates_follow_the_paper_equations():
    torch.manual_seed(1)
    cell = MetaLearnerCell(hidden_size=3).double()
    h = torch.randn(3, 4, dtype=torch.float64)
    theta, grad, i_prev, f_prev = torch.randn(4, 4, dtype=torch.float64)
    out = cell(h, theta, grad, i_prev, f_prev)
    for k in range(4):
        zi = cell.weight_i @ torch.cat([h[:, k], theta[k : k + 1], i_prev[k : k + 1]]) + cell.bias_i
        zf = cell.weight_f @ torch.cat([h[:, k], theta[k : k + 1], f_prev[k : k + 1]]) + cell.bias_f
        i, f = torch.sigmoid(zi), torch.sigmoid(zf)
        torch.testing.assert_close(out.theta[k : k + 1], f * theta[k] + i * -grad[k])


def test_cell_update_with_unit_forget_gate_is_an_sgd_step():
    theta, grad = torch.randn(2, 100)
    alpha = torch.full((100,), 0.1)
    assert torch.equal(cell_update(theta, grad, alpha, torch.ones(100)), theta - 0.1 * grad)


def test_initialisation_starts_near_gradient_descent():
    for seed in range(5):
        torch.manual_seed(seed)
        cell = MetaLearnerCell(hidden_size=20)
        assert cell.weight_i.shape == cell.weight_f.shape == (22,)
        for w in (cell.weight_i, cell.weight_f):
            assert w.abs().max() <= 0.01
        assert 4.0 <= cell.bias_f.item() <= 5.0
        assert -5.0 <= cell.bias_i.item() <= -4.0


def test_unknown_feedback_is_rejected():
    with pytest.raises(ValueError, match="feedback"):
        MetaLearnerCell(feedback="logits")
