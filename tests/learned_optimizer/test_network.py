"""The LSTM optimizer: coordinate-wise, shared weights, scaled output, gradients as constants."""

import torch

from fewshot.learned_optimizer.network import LSTMOptimizer
from fewshot.nn.preprocess import preprocess


def test_update_has_the_gradient_shape_and_a_state_per_layer_and_coordinate():
    net = LSTMOptimizer(hidden_size=7, layers=3)
    grad = torch.randn(4, 5)
    update, state = net(grad, None)
    assert update.shape == (4, 5)
    assert len(state) == 3 and all(h.shape == (7, 20) and c.shape == (7, 20) for h, c in state)
    update2, _ = net(grad, state)
    assert not torch.equal(update, update2)  # the state matters


def test_coordinates_share_weights_but_not_state():
    """Permuting the coordinates permutes the updates, over several steps: each coordinate sees
    only its own gradient history."""
    torch.manual_seed(0)
    net = LSTMOptimizer()
    grads = [torch.randn(2, 6) for _ in range(3)]
    perm = torch.randperm(6)
    state = state_p = None
    for grad in grads:
        update, state = net(grad, state)
        update_p, state_p = net(grad[:, perm], state_p)
        torch.testing.assert_close(update_p, update[:, perm])


def test_output_is_the_scaled_linear_readout_of_the_top_layer():
    torch.manual_seed(1)
    net = LSTMOptimizer(hidden_size=4, layers=2, output_scale=0.1)
    grad = torch.randn(1, 3)
    update, state = net(grad, None)
    x = preprocess(grad.reshape(-1), 10.0, dim=-1)  # [3, 2]
    h1, _ = net.lstm[0].reference(x)
    h2, _ = net.lstm[1].reference(h1)
    expected = 0.1 * net.head(h2).reshape(1, 3)
    torch.testing.assert_close(update, expected)


def test_meta_gradient_reaches_every_parameter_but_not_the_gradient_input():
    torch.manual_seed(2)
    net = LSTMOptimizer()
    grad = torch.randn(3, 4, requires_grad=True)
    update, state = net(grad, None)
    update, _ = net(grad.detach() * 2, state)
    params = list(net.parameters())
    grads = torch.autograd.grad(update.square().sum(), params + [grad], allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:-1])
    assert grads[-1] is None  # the optimizee gradient enters as a constant
