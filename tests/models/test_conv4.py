"""Conv4's batch norm without a scale and its 'same' max-pool padding, and the inner loops on them."""

import copy

import pytest
import torch
import torch.nn.functional as F

from fewshot.data.episode import Episode
from fewshot.methods.inner_loop import _batch_norm_from_elementary_ops, module_state, sgd_adapt
from fewshot.methods.maml import MAML
from fewshot.models.conv4 import Conv4, ShiftOnlyBatchNorm2d, batch_norm, block_side


def random_episode(n_way: int, n_shot: int, n_query: int, batch: int, seed: int) -> Episode:
    g = torch.Generator().manual_seed(seed)
    return Episode(
        torch.rand(batch, n_way * n_shot, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(n_way).repeat_interleave(n_shot).expand(batch, -1),
        torch.rand(batch, n_way * n_query, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(n_way).repeat_interleave(n_query).expand(batch, -1),
        n_way,
        torch.arange(batch),
    )


@pytest.mark.parametrize(
    "image_size, pool_padding, sides",
    [
        (84, "valid", [42, 21, 10, 5]),
        (84, "same", [42, 21, 11, 6]),  # openai/supervised-reptile MiniImageNetModel
        (28, "valid", [14, 7, 3, 1]),
        (28, "same", [14, 7, 4, 2]),
    ],
)
def test_feature_map_sides_after_each_block(image_size, pool_padding, sides):
    model = Conv4(1, 4, image_size, pool_padding=pool_padding)
    x = torch.rand(2, 1, image_size, image_size)
    measured = [model.features[: i + 1](x).shape[-1] for i in range(4)]
    assert measured == sides
    side = image_size
    for expected in sides:
        side = block_side(side, "maxpool", pool_padding)
        assert side == expected


def test_same_padding_gives_1152_features_at_84x84_with_32_filters():
    """Reptile's Mini-ImageNet model: 6 x 6 x 32 = 1,152 features (the floor gives 5 x 5 x 32 = 800)."""
    same, valid = Conv4(3, 32, 84, n_classes=5, pool_padding="same"), Conv4(3, 32, 84, n_classes=5)
    assert (same.embedding_dim, valid.embedding_dim) == (1152, 800)
    assert same.head.in_features == 1152
    assert same.embed(torch.rand(2, 3, 84, 84)).shape == (2, 1152)
    assert same(torch.rand(2, 3, 84, 84)).shape == (2, 5)


def test_same_padding_pools_like_tensorflow_same():
    """TF's max_pool(padding='same') on an odd side pads one row and column at the end, which no
    maximum picks: the ceil-mode pool equals a pool of the input padded with -inf."""
    x = torch.randn(2, 3, 21, 21)
    block = Conv4(3, 3, 21, pool_padding="same").features[0]
    pooled = block[3](x)
    expected = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2)
    assert pooled.shape[-1] == 11
    assert torch.equal(pooled, expected)


def test_batch_norm_without_scale_has_only_a_bias():
    model = Conv4(1, 8, 28, n_classes=5, bn_scale=False)
    names = [name for name, _ in model.named_parameters()]
    assert "features.0.1.weight" not in names and "features.0.1.bias" in names
    assert names == [
        *[f"features.{i}.{j}.{kind}" for i in range(4) for j, kind in ((0, "weight"), (0, "bias"), (1, "bias"))],
        "head.weight",
        "head.bias",
    ]
    assert "features.0.1.weight" not in model.state_dict()


def test_batch_norm_without_scale_computes_x_hat_plus_beta():
    norm = batch_norm(3, momentum=0.1, eps=1e-3, scale=False)
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    norm = norm.double()
    mean = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-3) + norm.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(_batch_norm_from_elementary_ops(norm, x), expected)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_shift_only_batch_norm_equals_batch_norm_with_gamma_one_in_both_modes(momentum):
    """Outputs and running statistics as ``nn.BatchNorm2d`` whose weight stays 1."""
    shift_only = ShiftOnlyBatchNorm2d(3, eps=1e-3, momentum=momentum).double()
    reference = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=momentum).double()
    with torch.no_grad():
        for norm in (shift_only, reference):
            norm.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    for _ in range(3):
        x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
        torch.testing.assert_close(shift_only(x), reference(x))
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(dict(shift_only.named_buffers())[name], buffer)
    assert shift_only.num_batches_tracked.item() == 3
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(shift_only.eval()(x), reference.eval()(x))


def test_one_inner_step_on_a_conv4_without_bn_scale_equals_a_manual_sgd_step():
    torch.manual_seed(0)
    model = Conv4(1, 8, 28, n_classes=5, bn_scale=False, init="xavier", bn_eps=1e-3)
    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    params, buffers = module_state(model)
    adapted = sgd_adapt(model, params, buffers, x, y, steps=1, lr=0.4)
    assert set(adapted) == set(params) and not any(name.endswith("1.weight") for name in adapted)
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(x), y).backward()
    for name, p in reference.named_parameters():
        assert torch.allclose(adapted[name], p - 0.4 * p.grad, atol=1e-6), name
        assert p.grad.abs().max() > 0, name


def maml_step(task_batching: str):
    torch.manual_seed(0)
    learner = Conv4(1, 4, 28, n_classes=3, bn_scale=False, init="xavier", head_init="normal", bn_eps=1e-3).double()
    method = MAML(learner, optimizer=torch.optim.Adam, inner_steps=2, inner_lr=0.3, task_batching=task_batching)
    episode = random_episode(n_way=3, n_shot=2, n_query=2, batch=3, seed=2)
    logits = method.train()(episode)
    loss = F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten())
    return logits.detach(), torch.autograd.grad(loss, list(method.parameters()))


def test_maml_vmap_and_loop_agree_on_a_conv4_without_bn_scale():
    (loop_logits, loop_grads), (vmap_logits, vmap_grads) = maml_step("loop"), maml_step("vmap")
    torch.testing.assert_close(vmap_logits, loop_logits)
    assert len(loop_grads) == 4 * 3 + 2  # conv weight, conv bias, BN bias per block; the head
    for a, b in zip(vmap_grads, loop_grads, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
