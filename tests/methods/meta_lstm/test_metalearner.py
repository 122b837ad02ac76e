import math

import pytest
import torch
import torch.nn.functional as F

from fewshot.methods.meta_lstm.metalearner import MetaLearner
from fewshot.models.conv4 import Conv4
from tests.methods.meta_lstm.conftest import random_episode, tiny_conv4


def meta_parameters(meta: MetaLearner) -> dict[str, torch.Tensor]:
    return dict(meta.named_parameters())


def manual_sgd(
    meta: MetaLearner, support_x, support_y, alpha: float, steps: int, grad_divisor: float = 1.0
) -> torch.Tensor:
    """Plain SGD from c0 on the same functional learner, with the same per-episode BN buffers,
    on the gradient of the mean support loss divided by ``grad_divisor``."""
    theta, buffers = meta.c0.detach(), meta.fresh_buffers()
    for _ in range(steps):
        leaf = theta.clone().requires_grad_(True)
        loss = F.cross_entropy(meta.learner_forward(leaf, buffers, support_x, train=True), support_y)
        (grad,) = torch.autograd.grad(loss, leaf)
        theta = theta - alpha * (grad / grad_divisor)
    return theta


# --- one step of the meta-learner with f = 1, i = alpha is one SGD step ----------------------------------


@pytest.mark.parametrize("grad_scale", ["mean", "official"])
@pytest.mark.parametrize("steps", [1, 3])
def test_forced_gates_make_each_step_an_sgd_step(episode, steps, grad_scale):
    support_x, support_y, _, _ = episode
    meta = MetaLearner(tiny_conv4(hidden=4), n_steps=steps, grad_scale=grad_scale)
    alpha = 0.1
    with meta.force_gates(i=alpha, f=1.0):
        theta, _, gates = meta.adapt(support_x, support_y)
    # official: the gradient of the mean loss divided by the support size (6 images) once more
    divisor = float(support_x.shape[0]) if grad_scale == "official" else 1.0
    expected = manual_sgd(meta, support_x, support_y, alpha, steps, grad_divisor=divisor)
    assert torch.equal(theta.detach(), expected)
    assert not torch.equal(expected, meta.c0.detach())
    torch.testing.assert_close(gates.values[:, 0, 0], torch.full((steps, 9), alpha))  # input mean
    torch.testing.assert_close(gates.values[:, 1, 0], torch.ones(steps, 9))  # forget mean
    assert (gates.values[:, :, 1] == 0).all()  # std


def test_unknown_grad_scale_is_refused_naming_the_allowed_values():
    with pytest.raises(ValueError, match=r"model.grad_scale must be one of \['official', 'mean'\], got 'x'"):
        MetaLearner(tiny_conv4(), n_steps=1, grad_scale="x")


def test_force_gates_is_scoped(episode):
    support_x, support_y, _, _ = episode
    meta = MetaLearner(tiny_conv4(), n_steps=1)
    with meta.force_gates(i=0.1):
        pass
    theta, _, _ = meta.adapt(support_x, support_y)
    assert not torch.equal(theta.detach(), manual_sgd(meta, support_x, support_y, 0.1, 1))


# --- gradient independence ----------------------------------------------------------------------------


def record_learner_grads(meta: MetaLearner, support_x, support_y):
    """A learner-gradient oracle that records its (loss, grad) pairs, and one that replays them."""
    recorded = []

    def recording(theta, buffers):
        out = meta.learner_loss_and_grad(theta, buffers, support_x, support_y)
        recorded.append(out)
        return out

    def replaying():
        it = iter(recorded)
        return lambda theta, buffers: next(it)

    return recording, replaying, recorded


def test_learner_gradient_enters_as_a_constant(episode):
    support_x, support_y, query_x, query_y = episode
    meta = MetaLearner(tiny_conv4(), n_steps=3)
    recording, replaying, recorded = record_learner_grads(meta, support_x, support_y)
    loss = meta.meta_loss(support_x, support_y, query_x, query_y, learner_grad=recording).loss
    assert len(recorded) == 3
    for learner_loss, grad in recorded:
        assert not grad.requires_grad and grad.grad_fn is None
        assert not learner_loss.requires_grad
    params = list(meta.parameters())
    real = torch.autograd.grad(loss, params)  # no create_graph anywhere: first order only
    constant = torch.autograd.grad(meta.meta_loss(*episode, learner_grad=replaying()).loss, params)
    for a, b in zip(real, constant, strict=True):
        assert torch.equal(a, b)


def test_second_order_learner_gradients_would_change_the_meta_gradient(episode):
    """Control for the test above: the equality is not vacuous, because a learner gradient that
    kept its graph (reference path; the fused LSTM refuses it) gives another meta-gradient."""
    support_x, support_y, query_x, query_y = episode
    meta = MetaLearner(tiny_conv4(), n_steps=2, fused=False).double()
    support_x, query_x = support_x.double(), query_x.double()

    def second_order(theta, buffers):
        loss = F.cross_entropy(meta.learner_forward(theta, buffers, support_x, train=True), support_y)
        (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
        return loss, grad

    first = torch.autograd.grad(meta.meta_loss(support_x, support_y, query_x, query_y).loss, meta.c0)[0]
    loss = meta.meta_loss(support_x, support_y, query_x, query_y, learner_grad=second_order).loss
    second = torch.autograd.grad(loss, meta.c0)[0]
    assert (first - second).abs().max() > 1e-6 * first.abs().max()

    fused = MetaLearner(tiny_conv4(), n_steps=2).double()
    with pytest.raises(RuntimeError, match="constant"):
        fused.meta_loss(support_x, support_y, query_x, query_y, learner_grad=second_order)


def test_meta_gradient_matches_finite_differences():
    """d(meta-loss)/d(c0, LSTM, cell) in float64 against central differences.

    Autograd differentiates the meta-loss with every learner gradient treated as a constant, i.e.
    the partial derivative at fixed (loss_t, grad_t). The finite-difference function is therefore
    the meta-loss with the learner gradients recorded at the unperturbed point and replayed: the
    same function, evaluated without autograd. Directional derivatives along random directions,
    one per parameter tensor.
    """
    support_x, support_y, query_x, query_y = random_episode(dtype=torch.float64)
    meta = MetaLearner(tiny_conv4(), n_steps=3).double()
    with torch.no_grad():  # leave the saturated initial regime so every parameter matters
        for p in (*meta.lstm.parameters(), meta.cell.weight_i, meta.cell.weight_f):
            p.uniform_(-0.3, 0.3)
        meta.cell.bias_i.fill_(-1.0)
        meta.cell.bias_f.fill_(2.0)
    recording, replaying, _ = record_learner_grads(meta, support_x, support_y)
    loss = meta.meta_loss(support_x, support_y, query_x, query_y, learner_grad=recording).loss
    params = meta_parameters(meta)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))

    def replayed_loss() -> float:
        with torch.no_grad():
            return meta.meta_loss(support_x, support_y, query_x, query_y, learner_grad=replaying()).loss.item()

    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for name, p in params.items():
        assert grads[name].abs().max() > 0, name
        direction = torch.randn(p.shape, generator=g, dtype=p.dtype)
        with torch.no_grad():
            p.add_(eps * direction)
            up = replayed_loss()
            p.sub_(2 * eps * direction)
            down = replayed_loss()
            p.add_(eps * direction)
        numeric = (up - down) / (2 * eps)
        analytic = (grads[name] * direction).sum().item()
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-10), name


# --- fused vs reference over a whole episode ----------------------------------------------------------


@pytest.mark.parametrize("feedback", ["preactivation", "gate"])
def test_fused_episode_matches_reference_episode(feedback):
    support_x, support_y, query_x, query_y = random_episode(dtype=torch.float64)
    learner = tiny_conv4(hidden=3)
    fused = MetaLearner(learner, n_steps=4, feedback=feedback).double()
    fused.lstm.block_size = 100  # several blocks, ragged last one
    reference = MetaLearner(learner, n_steps=4, feedback=feedback, fused=False).double()
    reference.load_state_dict(fused.state_dict())
    out_f = fused.meta_loss(support_x, support_y, query_x, query_y)
    out_r = reference.meta_loss(support_x, support_y, query_x, query_y)
    torch.testing.assert_close(out_f.loss, out_r.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(out_f.gates.values, out_r.gates.values)
    grads_f = torch.autograd.grad(out_f.loss, list(fused.parameters()))
    grads_r = torch.autograd.grad(out_r.loss, list(reference.parameters()))
    for a, b in zip(grads_f, grads_r, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# --- parameters and initialisation -------------------------------------------------------------------


def test_meta_learner_size_does_not_depend_on_the_learner():
    small = MetaLearner(Conv4(1, 2, 16, 3), n_steps=2)
    large = MetaLearner(Conv4(3, 32, 84, 5), n_steps=2)
    assert large.c0.numel() > 100 * small.c0.numel()

    def shared(m):
        return sum(p.numel() for name, p in m.named_parameters() if name != "c0")

    assert shared(small) == shared(large) == 4 * 20 * (4 + 20 + 1) + 2 * (20 + 2) + 2
    assert {name for name, _ in small.named_parameters()} == {name for name, _ in large.named_parameters()}


def test_initialisation_and_c0(episode):
    learner = tiny_conv4()
    meta = MetaLearner(learner, n_steps=2)
    assert isinstance(meta.c0, torch.nn.Parameter) and meta.c0.requires_grad
    assert torch.equal(meta.c0.detach(), torch.cat([p.detach().reshape(-1) for p in learner.parameters()]))
    assert meta.lstm.weight.abs().max() <= 0.01 and meta.lstm.bias.abs().max() <= 0.01
    assert meta.cell.weight_i.abs().max() <= 0.01 and meta.cell.weight_f.abs().max() <= 0.01
    assert 4 <= meta.cell.bias_f.item() <= 5 and -5 <= meta.cell.bias_i.item() <= -4
    meta.meta_loss(*episode).loss.backward()
    for name, p in meta.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the learner is a template, not a submodule: its parameters are neither trained nor saved
    assert all(not k.startswith(("learner", "_train")) for k in meta.state_dict())


# --- batch norm ---------------------------------------------------------------------------------------


def test_support_mode_resets_statistics_every_episode_and_uses_them_for_the_query():
    meta = MetaLearner(tiny_conv4(), n_steps=3).eval()
    assert meta.bn_mode == "support"
    first = random_episode(seed=1)
    second = random_episode(seed=2)
    with torch.no_grad():
        _, buffers_after_first, _ = meta.adapt(first[0], first[1])
        theta, buffers, _ = meta.adapt(second[0], second[1])
        _, buffers_alone, _ = MetaLearner(tiny_conv4(), n_steps=3).eval().adapt(second[0], second[1])
    for name, value in buffers.items():
        assert torch.equal(value, buffers_alone[name]), name  # nothing leaks from the first episode
    means = [k for k in buffers if k.endswith("running_mean")]
    assert all(not torch.equal(buffers[k], buffers_after_first[k]) for k in means)
    assert all(buffers[k].abs().sum() > 0 for k in means)
    assert all(v.item() == 3 for k, v in buffers.items() if k.endswith("num_batches_tracked"))
    assert all((v == 0).all() for k, v in meta.fresh_buffers().items() if k.endswith("running_mean"))

    query = second[2]
    with torch.no_grad():
        logits = meta.predict(theta, buffers, query)
        # eval-mode BN with the episode's running statistics: each query is scored on its own
        torch.testing.assert_close(logits[:1], meta.predict(theta, buffers, query[:1]))
        batch_logits = meta.predict(theta, buffers, query, bn_mode="transductive")
    assert not torch.allclose(logits, batch_logits)


def test_batch_mode_normalises_the_query_with_its_own_statistics(episode):
    support_x, support_y, query_x, _ = episode
    meta = MetaLearner(tiny_conv4(), n_steps=2).train()
    assert meta.bn_mode == "transductive"
    with torch.no_grad():
        theta, buffers, _ = meta.adapt(support_x, support_y)
        logits = meta.predict(theta, buffers, query_x)
        alone = meta.predict(theta, buffers, query_x[:2])
        # batch statistics of the query itself: the same as normalising with its mean and variance
        expected = meta.learner_forward(theta, meta.fresh_buffers(), query_x, train=True)
        in_eval_mode = meta.predict(theta, buffers, query_x, bn_mode="support")
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, in_eval_mode)
    assert not torch.allclose(logits[:2], alone)  # depends on the other queries: batch statistics
    # the running statistics of the episode are not touched by a batch-mode prediction
    with torch.no_grad():
        _, fresh, _ = meta.adapt(support_x, support_y)
    for name, value in buffers.items():
        assert torch.equal(value, fresh[name])


def test_adapt_works_without_grad_and_agrees_with_training_path(episode):
    support_x, support_y, query_x, query_y = episode
    meta = MetaLearner(tiny_conv4(), n_steps=3).eval()
    with torch.no_grad():
        theta, buffers, gates = meta.adapt(support_x, support_y)
        logits = meta.predict(theta, buffers, query_x)
    assert theta.grad_fn is None and not logits.requires_grad
    out = meta.meta_loss(support_x, support_y, query_x, query_y)
    torch.testing.assert_close(out.logits.detach(), logits)
    torch.testing.assert_close(out.gates.values, gates.values)


def test_evaluation_works_in_inference_mode(episode):
    """Lightning validates under ``torch.inference_mode``; adaptation still needs gradients."""
    support_x, support_y, query_x, query_y = episode
    meta = MetaLearner(tiny_conv4(), n_steps=3).eval()
    expected = meta.meta_loss(support_x, support_y, query_x, query_y)
    with torch.inference_mode():
        support_x, query_x = support_x * 1.0, query_x * 1.0  # inference tensors, like a batch hook's
        out = meta.meta_loss(support_x, support_y, query_x, query_y)
    torch.testing.assert_close(out.logits, expected.logits.detach())
    torch.testing.assert_close(out.gates.values, expected.gates.values)


# --- gate statistics ----------------------------------------------------------------------------------


def test_gate_statistics_per_step_and_layer(episode):
    meta = MetaLearner(tiny_conv4(), n_steps=4)
    gates = meta.meta_loss(*episode).gates
    assert gates.layers == ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4", "head")
    assert gates.values.shape == (4, 2, 2, 9) and not gates.values.requires_grad
    means = gates.values[:, :, 0]
    assert ((means > 0) & (means < 1)).all()
    # initial regime: small input gate, forget gate near 1
    assert (means[:, 0] < 0.05).all() and (means[:, 1] > 0.95).all()
    metrics = gates.to_metrics()
    assert len(metrics) == 4 * 2 * 2 * 9
    assert metrics["gates/input/conv1/step1"] == pytest.approx(means[0, 0, 0].item())
    assert metrics["gates/forget_std/head/step4"] == pytest.approx(gates.values[3, 1, 1, 8].item())


def test_gate_statistics_are_segment_means():
    meta = MetaLearner(tiny_conv4(), n_steps=1)
    i = torch.rand(meta.layout.n_coords)
    f = torch.rand(meta.layout.n_coords)
    summary = meta._summarise_gates(i, f)
    sizes = meta.segment_sizes
    start = sum(sizes[:2])
    conv2 = slice(start, start + sizes[2])
    torch.testing.assert_close(summary[0, 0, 2], i[conv2].mean())
    torch.testing.assert_close(summary[1, 1, 2], f[conv2].std(correction=0))


# --- it learns ----------------------------------------------------------------------------------------


# measured (validation loss after): mean 40 steps 0.70; official 40 steps 0.93, 80 steps 0.58 (its
# gradients are 6x smaller, so the input gate has further to go)
@pytest.mark.parametrize(("grad_scale", "meta_steps"), [("mean", 40), ("official", 80)])
def test_meta_training_on_a_toy_problem_reduces_the_query_loss(grad_scale, meta_steps):
    """3-way 2-shot episodes of noisy binary templates with labels shuffled per episode, so only
    adaptation on the support set can beat chance (log 3 ~ 1.10)."""
    n_way, n_shot, n_query = 3, 2, 5
    torch.manual_seed(0)
    templates = (torch.rand(30, 1, 16, 16) > 0.5).float() * 2 - 1

    def sample(g):
        classes = torch.randperm(30, generator=g)[:n_way]

        def draw(k):
            x = templates[classes].repeat_interleave(k, 0)
            return x + 0.8 * torch.randn(x.shape, generator=g), torch.arange(n_way).repeat_interleave(k)

        return (*draw(n_shot), *draw(n_query))

    meta = MetaLearner(Conv4(1, 8, 16, n_way, bn_momentum=0.9, bn_eps=1e-3), n_steps=3, grad_scale=grad_scale)
    g = torch.Generator().manual_seed(123)
    validation = [sample(g) for _ in range(20)]

    def validation_loss():
        with torch.no_grad():
            return sum(meta.meta_loss(*e).loss.item() for e in validation) / len(validation)

    before = validation_loss()
    optimizer = torch.optim.Adam(meta.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(meta_steps):
        loss = meta.meta_loss(*sample(g)).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(meta.parameters(), 0.25)
        optimizer.step()
    after = validation_loss()
    assert before > math.log(n_way)
    assert after < 0.85 < math.log(n_way)
    assert after < before - 0.3
