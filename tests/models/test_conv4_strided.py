"""Conv4's stride-2 'SAME' down-sampling and mean readout (the Omniglot networks of cbfinn/maml and
openai/supervised-reptile), and MAML / Reptile running on them."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.methods.maml import MAML
from fewshot.methods.reptile import Reptile
from fewshot.models.conv4 import Conv4, SameStridedConv2d, block_side, tf_same_padding
from tests.methods.test_maml import random_episode

FINN = {"downsample": "stride", "readout": "mean", "bn_scale": False, "bn_eps": 1e-3, "init": "xavier"}
NICHOL = {"downsample": "stride", "bn_eps": 1e-3, "init": "xavier"}


@pytest.mark.parametrize(
    "image_size, sides",
    [(28, [14, 7, 4, 2]), (84, [42, 21, 11, 6])],
)
def test_strided_blocks_halve_the_map_rounding_up(image_size, sides):
    model = Conv4(1, 4, image_size, downsample="stride")
    x = torch.rand(2, 1, image_size, image_size)
    assert [model.features[: i + 1](x).shape[-1] for i in range(4)] == sides
    side = image_size
    for expected in sides:
        side = block_side(side, "stride")
        assert side == expected


def test_a_strided_block_is_conv_bn_relu_without_pooling():
    block = Conv4(1, 4, 28, downsample="stride", dropout=0.5).features[0]
    assert [type(m).__name__ for m in block] == ["SameStridedConv2d", "BatchNorm2d", "ReLU", "Dropout"]
    assert not any(isinstance(m, nn.MaxPool2d) for m in Conv4(1, 4, 28, downsample="stride").modules())


@pytest.mark.parametrize(
    "options, image_size, hidden, features",
    [
        ({"readout": "mean"}, 28, 64, 64),  # cbfinn/maml Omniglot: the mean of the 2x2x64 map
        ({}, 28, 64, 256),  # supervised-reptile OmniglotModel: 2 x 2 x 64 flattened
        ({"readout": "mean"}, 84, 32, 32),
        ({}, 84, 32, 1152),  # 6 x 6 x 32
    ],
)
def test_head_in_features_for_each_readout(options, image_size, hidden, features):
    model = Conv4(3, hidden, image_size, n_classes=5, downsample="stride", **options)
    x = torch.rand(2, 3, image_size, image_size)
    assert model.embedding_dim == model.head.in_features == features
    assert model.embed(x).shape == (2, features)
    assert model(x).shape == (2, 5)


def test_mean_readout_is_the_spatial_mean_of_the_last_map():
    torch.manual_seed(0)
    model = Conv4(1, 8, 28, downsample="stride", readout="mean")
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model.embed(x), model.features(x).mean((2, 3)))
    maxpool_mean = Conv4(1, 8, 84, readout="mean")  # readout works with max-pooling too: 5x5 map -> 8
    assert maxpool_mean.embed(torch.rand(2, 1, 84, 84)).shape == (2, 8)


@pytest.mark.parametrize(
    "size, padding",
    [(28, (0, 1)), (14, (0, 1)), (7, (1, 1)), (4, (0, 1)), (84, (0, 1)), (42, (0, 1)), (21, (1, 1)), (11, (1, 1))],
)
def test_tensorflow_same_padding_puts_the_odd_pixel_at_the_end(size, padding):
    """total = max((ceil(size / 2) - 1) * 2 + 3 - size, 0), split with the extra one after."""
    assert tf_same_padding(size) == padding


def test_strided_conv_equals_an_end_padded_unpadded_conv():
    torch.manual_seed(0)
    conv = SameStridedConv2d(2, 3)
    x = torch.randn(2, 2, 28, 28)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    assert conv(x).shape == (2, 3, 14, 14)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=0)
    # PyTorch's symmetric padding=1 samples other pixels: a different output
    assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1))
    odd = torch.randn(2, 2, 7, 7)  # an odd side pads 1 and 1, as padding=1
    torch.testing.assert_close(conv(odd), F.conv2d(odd, conv.weight, conv.bias, stride=2, padding=1), rtol=0, atol=0)


def influencing_pixels(side: int, row: int, col: int) -> list[list[int]]:
    """The input rows and columns whose value changes output (row, col) of a 1-channel strided conv."""
    conv = SameStridedConv2d(1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.zeros(1, 1, side, side, requires_grad=True)
    conv(x)[0, 0, row, col].backward()
    hit = x.grad[0, 0] != 0
    return [hit.any(1).nonzero().flatten().tolist(), hit.any(0).nonzero().flatten().tolist()]


def test_receptive_fields_start_at_the_first_pixel_and_end_on_the_padding():
    assert influencing_pixels(28, 0, 0) == [[0, 1, 2], [0, 1, 2]]  # no padding above / left
    assert influencing_pixels(28, 13, 13) == [[26, 27], [26, 27]]  # the third row is the padding
    assert influencing_pixels(7, 0, 0) == [[0, 1], [0, 1]]  # odd side: one padded row above
    assert influencing_pixels(7, 3, 3) == [[5, 6], [5, 6]]


@pytest.mark.parametrize(
    "options, n_classes, parameters",
    [
        # conv1 64*9 + 64, no BN gamma (64 shifts), conv2-4 3 * (64*64*9 + 64 + 64), head 64*5 + 5
        (FINN, 5, 640 + 64 + 3 * (36864 + 128) + 325),  # 112,005
        # BN gamma and beta (128 per block), head 256*20 + 20
        (NICHOL, 20, 640 + 128 + 3 * (36864 + 192) + 5140),  # 117,076
        ({}, 5, 640 + 128 + 3 * (36864 + 192) + 325),  # today's max-pooling Conv-4: 112,261
    ],
)
def test_parameter_counts(options, n_classes, parameters):
    assert sum(p.numel() for p in Conv4(1, 64, 28, n_classes=n_classes, **options).parameters()) == parameters


@pytest.mark.parametrize(
    "options, message",
    [
        ({"downsample": "avgpool"}, r"Conv4 downsample must be one of \('maxpool', 'stride'\), got 'avgpool'\.$"),
        ({"readout": "max"}, r"Conv4 readout must be one of \('flatten', 'mean'\), got 'max'\.$"),
        (
            {"downsample": "stride", "pool_padding": "same"},
            r"Conv4 pool_padding='same' has no max-pool to act on with downsample='stride'; "
            r"leave pool_padding at 'valid'\.$",
        ),
    ],
)
def test_bad_options_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=message) as error:
        Conv4(1, 4, 28, **options)
    assert "\n" not in str(error.value)


def test_functional_call_equals_the_module_call():
    torch.manual_seed(0)
    model = Conv4(1, 4, 28, n_classes=5, **FINN)
    x = torch.rand(6, 1, 28, 28)
    state = ({n: p.detach() for n, p in model.named_parameters()}, dict(model.named_buffers()))
    torch.testing.assert_close(torch.func.functional_call(model, state, x), model(x), rtol=0, atol=0)


def finn_maml_step(task_batching: str, first_order: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Query logits and meta-gradients of one MAML step on cbfinn/maml's Omniglot learner."""
    torch.manual_seed(0)
    learner = Conv4(1, 4, 28, n_classes=3, head_init="normal", **FINN).double()
    method = MAML(
        learner, torch.optim.Adam, inner_steps=2, inner_lr=0.4, first_order=first_order, task_batching=task_batching
    ).train()
    episode = random_episode(n_way=3, n_shot=1, n_query=2, batch=3, dtype=torch.float64, seed=2)
    logits = method(episode)
    loss = F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten())
    return logits.detach(), torch.autograd.grad(loss, list(method.parameters()))


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_loop_and_vmap_agree_on_the_strided_mean_learner(first_order):
    loop_logits, loop_grads = finn_maml_step("loop", first_order)
    vmap_logits, vmap_grads = finn_maml_step("vmap", first_order)
    torch.testing.assert_close(vmap_logits, loop_logits)
    assert len(loop_grads) == 4 * 3 + 2  # conv weight, conv bias, BN shift per block; the head
    for a, b in zip(vmap_grads, loop_grads, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_maml_second_order_meta_gradient_through_the_padding_matches_finite_differences():
    """The first conv's weight gradient, second order through F.pad, against central differences."""
    torch.manual_seed(0)
    learner = Conv4(1, 2, 28, n_classes=3, **FINN).double()
    method = MAML(learner, torch.optim.SGD, inner_steps=1, inner_lr=0.4).train()
    episode = random_episode(n_way=3, n_shot=1, n_query=2, batch=1, dtype=torch.float64, seed=3)

    def loss() -> torch.Tensor:
        return F.cross_entropy(method(episode).flatten(0, 1), episode.query_labels.flatten())

    weight = learner.features[0][0].weight
    (grad,) = torch.autograd.grad(loss(), weight)
    h, numeric = 1e-6, torch.zeros(6, dtype=torch.float64)
    with torch.no_grad():
        for i in range(6):
            weight.view(-1)[i] += h
            plus = loss()
            weight.view(-1)[i] -= 2 * h
            minus = loss()
            weight.view(-1)[i] += h
            numeric[i] = (plus - minus) / (2 * h)
    assert grad.view(-1)[:6].abs().max() > 0
    torch.testing.assert_close(grad.view(-1)[:6], numeric, rtol=1e-5, atol=1e-9)


def test_maml_keeps_the_batch_norm_shifts_out_of_the_inner_loop_of_the_strided_learner():
    torch.manual_seed(0)
    method = MAML(Conv4(1, 4, 28, n_classes=5, **FINN), torch.optim.Adam, inner_steps=2, inner_adapt_bn=False)
    episode = random_episode(batch=1)
    adapted, _ = method.train().adapt(episode.support_images[0], episode.support_labels[0], steps=2, meta_train=True)
    for name, p in method.learner.named_parameters():
        moved = (adapted[name] - p).abs().max().item()
        assert (moved == 0.0) if ".1.bias" in name else (moved > 0.0), name


def test_reptile_adapts_and_evaluates_the_strided_flatten_learner():
    torch.manual_seed(0)
    method = Reptile(
        Conv4(1, 4, 28, n_classes=5, **NICHOL),
        torch.optim.SGD,
        inner_optimizer="adam",
        inner_steps=2,
        eval_inner_steps=2,
        eval_bn="support_plus_query",
    )
    assert method.learner.head.in_features == 16  # 2 x 2 x 4
    episode = random_episode(n_shot=1, n_query=2, batch=2)
    adapted, _ = method.train().adapt_tasks(episode, meta_train=True)
    theta = dict(method.learner.named_parameters())
    assert all((phi[name] - theta[name]).abs().max() > 0 for phi in adapted for name in theta)
    with torch.no_grad():
        logits = method.eval()(episode)
    assert logits.shape == (2, 10, 5) and torch.isfinite(logits).all()
