"""MAML, first-order MAML and Meta-SGD: inner steps, meta-gradients, batch norm, training."""

import copy
import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fewshot
from fewshot.data.episode import Episode
from fewshot.methods.inner_loop import module_state, sgd_adapt
from fewshot.methods.maml import MAML
from fewshot.models.conv4 import Conv4
from fewshot.run.training import train
from tests.conftest import compose_config
from tests.methods.test_protonet_learning import SHORT_RUN, pixel_nn_on_test_episodes


def random_episode(n_way=5, n_shot=1, n_query=3, batch=2, shape=(1, 28, 28), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Episode(
        torch.rand(batch, n_way * n_shot, *shape, generator=g, dtype=dtype),
        torch.arange(n_way).repeat_interleave(n_shot).expand(batch, -1),
        torch.rand(batch, n_way * n_query, *shape, generator=g, dtype=dtype),
        torch.arange(n_way).repeat_interleave(n_query).expand(batch, -1),
        n_way,
        torch.arange(batch),
    )


def meta_loss(method: MAML, episode: Episode) -> torch.Tensor:
    return F.cross_entropy(method(episode).flatten(0, 1), episode.query_labels.flatten())


def tiny_learner(seed=0) -> nn.Module:
    """A float64 MLP with batch norm: small enough for finite differences, non-linear enough
    for second-order terms to matter."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()


def tiny_episode(batch=2):
    return random_episode(n_way=3, n_shot=2, n_query=2, batch=batch, shape=(4,), dtype=torch.float64, seed=1)


def test_one_inner_step_equals_a_manual_sgd_step_on_conv4():
    torch.manual_seed(0)
    model = Conv4(1, 8, 28, n_classes=5)
    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    params, buffers = module_state(model)
    adapted = sgd_adapt(model, params, buffers, x, y, steps=1, lr=0.4)

    reference = copy.deepcopy(model)
    F.cross_entropy(reference(x), y).backward()
    for name, p in reference.named_parameters():
        assert torch.allclose(adapted[name], p - 0.4 * p.grad, atol=1e-6), name
    for name, b in model.named_buffers():  # the functional call ran in train mode on copies
        assert torch.equal(b, dict(Conv4(1, 8, 28, n_classes=5).named_buffers())[name]), name


def test_second_order_meta_gradient_matches_central_finite_differences():
    method = MAML(tiny_learner(), optimizer=torch.optim.SGD, inner_steps=2, inner_lr=0.5)
    episode = tiny_episode()
    meta_loss(method, episode).backward()
    params = dict(method.learner.named_parameters())
    h = 1e-6
    with torch.no_grad():
        for name, p in params.items():
            numeric = torch.zeros_like(p)
            for i in range(p.numel()):
                p.view(-1)[i] += h
                plus = meta_loss(method, episode)
                p.view(-1)[i] -= 2 * h
                minus = meta_loss(method, episode)
                p.view(-1)[i] += h
                numeric.view(-1)[i] = (plus - minus) / (2 * h)
            assert torch.allclose(p.grad, numeric, rtol=1e-5, atol=1e-8), name


def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_weights():
    episode = tiny_episode(batch=1)
    second = MAML(tiny_learner(), optimizer=torch.optim.SGD, inner_steps=2, inner_lr=0.5)
    first = MAML(tiny_learner(), optimizer=torch.optim.SGD, inner_steps=2, inner_lr=0.5, first_order=True)
    meta_loss(second, episode).backward()
    meta_loss(first, episode).backward()

    params, buffers = module_state(first.learner, detach=True)
    first.learner.train()
    phi = sgd_adapt(first.learner, params, buffers, episode.support_images[0], episode.support_labels[0], 2, 0.5)
    phi = {k: v.detach().requires_grad_() for k, v in phi.items()}
    query_loss = F.cross_entropy(
        torch.func.functional_call(first.learner, (phi, buffers), episode.query_images[0]), episode.query_labels[0]
    )
    reference = torch.autograd.grad(query_loss, tuple(phi.values()))
    differs = False
    for (name, p_first), (_, p_second), ref in zip(
        first.learner.named_parameters(), second.learner.named_parameters(), reference
    ):
        assert torch.allclose(p_first.grad, ref, atol=1e-12), name
        differs |= not torch.allclose(p_first.grad, p_second.grad, atol=1e-6)
    assert differs, "first- and second-order meta-gradients should differ"


def test_meta_sgd_step_sizes_are_meta_trained_parameters():
    method = MAML(Conv4(1, 8, 28, n_classes=5), optimizer=torch.optim.Adam, inner_lr=0.3, learn_inner_lr=True)
    assert method.display_name == "Meta-SGD"
    lrs = dict(method.inner_lrs.named_parameters())
    assert len(lrs) == len(list(method.learner.parameters()))
    assert all(torch.all(a == 0.3) for a in lrs.values())
    optimized = {id(p) for group in method.configure_optimizers().param_groups for p in group["params"]}
    assert all(id(a) in optimized for a in lrs.values())
    meta_loss(method, random_episode()).backward()
    for name, a in lrs.items():
        assert a.grad is not None and a.grad.abs().sum() > 0, name


def test_display_names():
    learner = Conv4(1, 8, 28, n_classes=5)
    assert MAML(learner, torch.optim.Adam).display_name == "MAML"
    assert MAML(learner, torch.optim.Adam, first_order=True).display_name == "FOMAML"
    assert MAML(learner, torch.optim.Adam, learn_inner_lr=True).display_name == "Meta-SGD"


def test_batch_norm_is_transductive_and_running_buffers_never_change():
    torch.manual_seed(0)
    method = MAML(Conv4(1, 8, 28, n_classes=5), optimizer=torch.optim.Adam, inner_steps=2, eval_inner_steps=2)
    initial = {k: v.clone() for k, v in method.learner.named_buffers()}
    episode = random_episode()
    method.train()
    train_logits = method(episode)
    F.cross_entropy(train_logits.flatten(0, 1), episode.query_labels.flatten()).backward()
    method.eval()
    with torch.no_grad():  # as Lightning evaluates (inference_mode: false)
        eval_logits = method(episode)
    assert not eval_logits.requires_grad
    # the same batch statistics in both modes: the same predictions
    assert torch.allclose(train_logits.detach(), eval_logits, atol=1e-5)
    for name, buffer in method.learner.named_buffers():
        assert torch.equal(buffer, initial[name]), name


def test_evaluation_uses_eval_inner_steps():
    torch.manual_seed(0)
    method = MAML(Conv4(1, 8, 28, n_classes=5), optimizer=torch.optim.Adam, inner_steps=1, eval_inner_steps=0)
    episode = random_episode()
    method.eval()
    params, buffers = module_state(method.learner)
    method.learner.train()
    unadapted = torch.func.functional_call(method.learner, (params, buffers), episode.query_images[0])
    assert torch.allclose(method(episode)[0], unadapted, atol=1e-6)


def test_head_with_another_n_way_is_rejected():
    method = MAML(Conv4(1, 8, 28, n_classes=4), optimizer=torch.optim.Adam)
    with pytest.raises(ValueError, match="outputs 4 logits but the episode is 5-way"):
        method(random_episode())


@pytest.mark.parametrize(("model", "name"), [("maml", "MAML"), ("fomaml", "FOMAML"), ("metasgd", "Meta-SGD")])
def test_fit_and_test_through_train(model, name, tiny_config, tmp_path):
    results = train(tiny_config(f"model={model}"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == name and saved["test"]["episodes"] == 6
    assert 0.0 <= saved["test"]["acc"] <= 1.0
    method = fewshot.load(results["checkpoint"])
    assert isinstance(method, MAML) and method.display_name == name
    fresh = Conv4(1, 64, 28, n_classes=5)
    for buffer_name, buffer in fresh.named_buffers():  # transductive BN: never updated
        assert torch.equal(dict(method.learner.named_buffers())[buffer_name], buffer), buffer_name


def test_train_n_way_different_from_n_way_is_a_clear_error(tiny_config):
    with pytest.raises(ValueError, match=r"data.n_way=5 outputs.*data.train_n_way=3.*Set data.train_n_way=null"):
        train(tiny_config("model=maml", "data.train_n_way=3"))


def test_maml_learns_on_embedded_default(tmp_path):
    cfg = compose_config(
        [
            *SHORT_RUN,
            "data=embedded",
            "data.train_episodes=300",
            "data.train_n_query=5",
            "data.test_episodes=200",
            "data.source.train_classes=200",
            "data.source.val_classes=20",
            "data.source.test_classes=100",
            "model=maml",
            "model.learner.hidden=32",
            "model.optimizer.lr=0.003",
            # the original code's inner scale (5x the step) barely trains this Conv-4 in a short run
            # (docs/reproduce.md, "Inner-loss scale on Omniglot"); this test is about MAML learning
            "model.inner_loss_scale=mean",
        ],
        tmp_path,
    )
    pixel_nn = pixel_nn_on_test_episodes(cfg, 200)
    started = time.perf_counter()
    results = train(cfg)
    acc = results["test"]["acc"]
    print(f"embedded 5-way 1-shot: MAML {acc:.3f}, raw-pixel NN {pixel_nn:.3f}, {time.perf_counter() - started:.0f} s")
    assert acc > 0.65
    assert acc > pixel_nn + 0.15


def small_conv4() -> nn.Module:
    """A float64 Conv-4 (batch norm over images) with few filters."""
    torch.manual_seed(0)
    return Conv4(1, 4, 28, n_classes=3).double()


def maml_results(task_batching: str, first_order: bool, steps: int, learn_inner_lr: bool = False, conv=False):
    """Query logits and meta-gradients of one training step, and evaluation logits."""
    method = MAML(
        small_conv4() if conv else tiny_learner(),
        optimizer=torch.optim.Adam,
        inner_steps=steps,
        eval_inner_steps=steps + 1,
        inner_lr=0.3,
        first_order=first_order,
        learn_inner_lr=learn_inner_lr,
        task_batching=task_batching,
    ).train()
    if conv:
        episode = random_episode(n_way=3, n_shot=2, n_query=2, batch=3, dtype=torch.float64, seed=2)
    else:
        episode = tiny_episode(batch=3)
    logits = method(episode)
    loss = F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten())
    grads = torch.autograd.grad(loss, list(method.parameters()))
    with torch.no_grad():
        evaluated = method.eval()(episode)
    return logits.detach(), grads, evaluated


@pytest.mark.parametrize("conv", [False, True], ids=["mlp-bn1d", "conv4-bn2d"])
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_task_batching_equals_the_per_task_loop(first_order, steps, conv):
    """``task_batching=vmap`` computes the same logits and meta-gradients as the plain loop
    (the loop's second-order meta-gradient is checked against finite differences above)."""
    loop = maml_results("loop", first_order, steps, conv=conv)
    batched = maml_results("vmap", first_order, steps, conv=conv)
    torch.testing.assert_close(batched[0], loop[0])
    torch.testing.assert_close(batched[2], loop[2])
    scale = max(g.abs().max().item() for g in loop[1])
    assert scale > 0
    for a, b in zip(batched[1], loop[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * scale)


def test_vmap_task_batching_equals_the_loop_for_meta_sgd():
    loop, batched = maml_results("loop", False, 2, learn_inner_lr=True), maml_results("vmap", False, 2, True)
    assert len(loop[1]) > len(list(tiny_learner().parameters()))  # the step sizes get gradients too
    for a, b in zip(batched[1], loop[1], strict=True):
        torch.testing.assert_close(a, b)


def test_vmap_task_batching_leaves_the_running_statistics_alone():
    method = MAML(tiny_learner(), optimizer=torch.optim.Adam, task_batching="vmap").train()
    before = {n: b.clone() for n, b in method.learner.named_buffers()}
    method(tiny_episode())
    for name, buffer in method.learner.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_unknown_task_batching_is_refused():
    with pytest.raises(ValueError, match=r"model.task_batching must be one of \('loop', 'vmap'\)"):
        MAML(tiny_learner(), optimizer=torch.optim.Adam, task_batching="grouped")


# -- the original code's loss scales, batch norm outside the inner loop, meta-gradient clipping --


def bn_free_conv4(n_classes=5) -> nn.Module:
    """A Conv-4 whose batch-norm layers have a shift but no scale (as the original code's)."""
    torch.manual_seed(0)
    learner = Conv4(1, 4, 28, n_classes=n_classes)
    for m in learner.modules():
        if isinstance(m, nn.BatchNorm2d):
            del m.weight
            m.register_parameter("weight", None)
    return learner


def bn_parameter_names(learner: nn.Module) -> set[str]:
    return {
        f"{module_name}.{name}"
        for module_name, module in learner.named_modules()
        if isinstance(module, nn.BatchNorm2d)
        for name, _ in module.named_parameters(recurse=False)
    }


@pytest.mark.parametrize(("scale", "factor"), [("official", 5.0), ("mean", 1.0)])
def test_one_inner_step_follows_inner_loss_scale(scale, factor):
    """Official: the step on sum_i CE_i / K (5-way 2-shot: 5 times the mean's step)."""
    torch.manual_seed(0)
    method = MAML(Conv4(1, 4, 28, n_classes=5), torch.optim.Adam, inner_lr=0.1, inner_loss_scale=scale)
    episode = random_episode(n_shot=2, batch=1)
    x, y = episode.support_images[0], episode.support_labels[0]
    adapted, _ = method.adapt(x, y, steps=1, meta_train=False)

    reference = copy.deepcopy(method.learner).train()
    per_example = F.cross_entropy(reference(x), y, reduction="none")
    loss = per_example.sum() / 2 if scale == "official" else per_example.mean()  # official: / K, summed
    loss.backward()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(adapted[name], p - 0.1 * p.grad, rtol=1e-5, atol=1e-7, msg=name)
    # the official loss is the mean's times N: the same step direction, factor times longer
    head = adapted["head.weight"] - method.learner.head.weight
    mean_grad = torch.autograd.grad(F.cross_entropy(reference(x), y), reference.head.weight)[0]
    torch.testing.assert_close(head, -0.1 * factor * mean_grad, rtol=1e-4, atol=1e-7)


def test_inner_adapt_bn_false_leaves_batch_norm_out_of_the_inner_loop_but_meta_learns_it():
    learner = bn_free_conv4()
    bn = bn_parameter_names(learner)
    assert len(bn) == 4 and all(name.endswith(".bias") for name in bn)  # no scale: only the shifts
    method = MAML(learner, torch.optim.Adam, inner_steps=2, inner_lr=0.4, inner_adapt_bn=False).train()
    episode = random_episode(batch=1)
    adapted, _ = method.adapt(episode.support_images[0], episode.support_labels[0], steps=2, meta_train=True)
    for name, p in method.learner.named_parameters():
        moved = (adapted[name] - p).abs().max().item()
        assert (moved == 0.0) if name in bn else (moved > 0.0), name
    meta_loss(method, episode).backward()
    for name, p in method.learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name

    adapting = MAML(bn_free_conv4(), torch.optim.Adam, inner_steps=2, inner_lr=0.4, inner_adapt_bn=True)
    adapted, _ = adapting.adapt(episode.support_images[0], episode.support_labels[0], steps=2, meta_train=False)
    for name in bn:
        assert not torch.equal(adapted[name], dict(adapting.learner.named_parameters())[name]), name


def test_meta_sgd_learns_no_step_size_for_parameters_left_out_of_the_inner_loop():
    method = MAML(Conv4(1, 8, 28, n_classes=5), torch.optim.Adam, learn_inner_lr=True, inner_adapt_bn=False)
    names = {n.replace("__", ".") for n in method.inner_lrs.keys()}
    bn = bn_parameter_names(method.learner)
    assert bn and names == {n for n, _ in method.learner.named_parameters()} - bn
    meta_loss(method, random_episode()).backward()
    assert all(a.grad.abs().sum() > 0 for a in method.inner_lrs.values())


@pytest.mark.parametrize("task_batching", ["loop", "vmap"])
def test_official_scale_and_frozen_batch_norm_agree_between_loop_and_vmap(task_batching):
    def results(batching):
        method = MAML(
            small_conv4(),
            torch.optim.Adam,
            inner_steps=2,
            inner_lr=0.1,
            inner_adapt_bn=False,
            inner_loss_scale="official",
            task_batching=batching,
        ).train()
        episode = random_episode(n_way=3, n_shot=2, n_query=2, batch=2, dtype=torch.float64, seed=2)
        logits = method(episode)
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten())
        return logits.detach(), torch.autograd.grad(loss, list(method.parameters()))

    loop, other = results("loop"), results(task_batching)
    torch.testing.assert_close(other[0], loop[0])
    for a, b in zip(other[1], loop[1], strict=True):
        torch.testing.assert_close(a, b)


def test_official_outer_loss_has_the_mean_value_and_the_original_codes_gradient():
    """maml.py's meta-loss: sum over tasks and queries of CE / K, divided by the meta-batch size."""
    episode = random_episode(n_way=5, n_shot=2, n_query=3, batch=2)
    grads, values = {}, {}
    for scale in ("official", "mean"):
        torch.manual_seed(0)
        method = MAML(Conv4(1, 4, 28, n_classes=5), torch.optim.Adam, outer_loss_scale=scale).train()
        loss, logits = method.episode_loss(episode)
        values[scale] = loss.item()
        grads[scale] = torch.autograd.grad(loss, method.learner.head.weight, retain_graph=True)[0]
        if scale == "official":
            per_example = F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten(), reduction="none")
            original = (per_example / 2).sum() / 2  # / update_batch_size, then / meta_batch_size
            expected = torch.autograd.grad(original, method.learner.head.weight)[0]
            torch.testing.assert_close(grads[scale], expected)
    assert values["official"] == pytest.approx(values["mean"], abs=1e-6)  # train/loss: the mean either way
    torch.testing.assert_close(grads["official"], 7.5 * grads["mean"])  # N*Q/K = 5*3/2


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("inner_loss_scale", "sum", r"model.inner_loss_scale must be one of \('official', 'mean'\), got 'sum'"),
        ("outer_loss_scale", "x", r"model.outer_loss_scale must be one of \('official', 'mean'\), got 'x'"),
        ("grad_clip_value", 0.0, r"model.grad_clip_value must be > 0 or null \(no clipping\), got 0.0"),
        ("grad_clip_value", -10.0, r"model.grad_clip_value must be > 0 or null \(no clipping\), got -10.0"),
    ],
)
def test_bad_loss_scale_or_clip_value_is_refused(option, value, message):
    with pytest.raises(ValueError, match=message):
        MAML(tiny_learner(), torch.optim.Adam, **{option: value})


def test_grad_clip_value_clips_each_meta_gradient_coordinate_in_a_training_step(tiny_config, monkeypatch):
    largest = []
    original = torch.optim.Adam.step

    def recording(self, closure):
        def closure_then_record():  # Lightning's closure back-propagates, then clips
            loss = closure()
            grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
            largest.append(max(g.abs().max().item() for g in grads))
            return loss

        return original(self, closure_then_record)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    train(tiny_config("model=maml", "model.grad_clip_value=1e-4"))
    assert largest and all(v == pytest.approx(1e-4, rel=1e-6) for v in largest)
    largest.clear()
    train(tiny_config("model=maml"))  # unclipped, the same steps have larger coordinates
    assert largest and all(v > 1e-3 for v in largest)
