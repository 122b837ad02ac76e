"""Conv4's initialisation schemes: the distributions each official code draws, reproducibly."""

import math

import pytest
import torch
from torch import nn

from fewshot.models.conv4 import Conv4
from fewshot.models.init import initialise


def seeded(seed: int = 0, **kwargs) -> Conv4:
    torch.manual_seed(seed)
    return Conv4(**{"in_channels": 3, "hidden": 32, "image_size": 84, "n_classes": 5, **kwargs})


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def fans(layer: nn.Module) -> tuple[int, int]:
    receptive = layer.weight[0, 0].numel() if layer.weight.dim() > 2 else 1
    return layer.weight.shape[1] * receptive, layer.weight.shape[0] * receptive


def test_default_init_is_pytorchs_own_and_draws_nothing_more():
    """``init="torch"`` builds the same weights as the plain layers built in the same order, and
    leaves the generator where they leave it: presets that name no scheme are unchanged."""
    model = seeded()
    after_model = torch.rand(1)
    torch.manual_seed(0)
    reference = [nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)]
    for _ in range(3):
        reference += [nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)]
    reference.append(nn.Linear(800, 5))
    assert torch.equal(torch.rand(1), after_model)
    expected = [p for layer in reference for p in layer.parameters()]
    for (name, p), q in zip(model.named_parameters(), expected, strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("init", ["torch", "torch7"])
def test_torch_and_torch7_conv_and_linear_draws_are_uniform_one_over_sqrt_fan_in(init):
    """torch7's ``SpatialConvolution:reset`` / ``Linear:reset`` draw weights and biases from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)); PyTorch's defaults have that bound (kaiming_uniform_ with
    a = sqrt(5)), so ``torch7`` keeps them."""
    model = seeded(init=init)
    for layer in weighted_layers(model):
        bound = 1 / math.sqrt(fans(layer)[0])
        for p in (layer.weight, layer.bias):
            assert p.abs().max() <= bound
        assert layer.weight.abs().max() > 0.95 * bound
        assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_torch7_draws_batch_norm_gamma_from_u01_and_zero_beta():
    model = seeded(init="torch7")
    gammas = torch.cat([bn.weight.detach() for bn in norms(model)])  # 4 x 32 values
    assert gammas.min() >= 0 and gammas.max() < 1
    assert not torch.equal(gammas, torch.ones_like(gammas))
    assert gammas.mean().item() == pytest.approx(0.5, abs=0.08)
    assert gammas.std().item() == pytest.approx(1 / math.sqrt(12), rel=0.2)
    for bn in norms(model):
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_torch_keeps_batch_norm_gamma_at_one():
    for bn in norms(seeded()):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))


def test_xavier_weights_lie_within_the_glorot_bound_and_biases_are_zero():
    model = seeded(init="xavier")
    for layer in weighted_layers(model):
        fan_in, fan_out = fans(layer)
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.95 * bound
        assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    for bn in norms(model):  # batch norm as built
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_xavier_bound_of_the_first_conv_is_the_number_expected():
    """3x3 conv, 3 -> 32 channels: fan_in 27, fan_out 288, bound sqrt(6 / 315) = 0.1380."""
    conv = seeded(init="xavier").features[0][0]
    assert fans(conv) == (27, 288)
    assert conv.weight.abs().max().item() <= 0.1381
    assert conv.weight.abs().max().item() > 0.13


def test_normal_head_is_standard_normal_with_zero_bias():
    """cbfinn/maml's Omniglot output layer: N(0, 1) weights (here 800 x 5 = 4,000 draws)."""
    model = seeded(init="xavier", head_init="normal")
    weight = model.head.weight.detach()
    assert weight.mean().item() == pytest.approx(0.0, abs=0.06)
    assert weight.std().item() == pytest.approx(1.0, abs=0.05)
    assert weight.abs().max() > 3  # a bounded (uniform) draw would stay below 0.09
    assert torch.equal(model.head.bias, torch.zeros_like(model.head.bias))
    conv = model.features[0][0]
    assert conv.weight.abs().max() <= math.sqrt(6 / (27 + 288))  # the body stays xavier


@pytest.mark.parametrize("options", [{"init": "torch7"}, {"init": "xavier"}, {"init": "xavier", "head_init": "normal"}])
def test_every_scheme_draws_from_the_global_seed(options):
    first, again, other = seeded(0, **options), seeded(0, **options), seeded(1, **options)
    params = [dict(m.named_parameters()) for m in (first, again, other)]
    for name in params[0]:
        assert torch.equal(params[0][name], params[1][name]), name
    assert not torch.equal(params[0]["features.0.0.weight"], params[2]["features.0.0.weight"])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"init": "kaiming"}, r"init must be one of \('torch', 'torch7', 'xavier'\), got 'kaiming'"),
        ({"head_init": "xavier"}, r"head_init must be one of \(None, 'normal'\), got 'xavier'"),
        ({"pool_padding": "full"}, r"Conv4 pool_padding must be one of \('valid', 'same'\), got 'full'"),
    ],
)
def test_unknown_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        seeded(**options)


def test_a_normal_head_needs_a_head():
    with pytest.raises(ValueError, match="head_init='normal' needs a model with a head"):
        seeded(n_classes=None, head_init="normal")


def test_initialise_refuses_an_unknown_scheme_on_any_module():
    with pytest.raises(ValueError, match="init must be one of"):
        initialise(nn.Linear(2, 2), "lecun")
