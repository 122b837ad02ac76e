import pytest
import torch
from torch import nn

from fewshot.models.conv4 import Conv4, layer_names
from fewshot.nn.flat import FlatLayout


def test_flatten_and_unflatten_round_trip_with_views():
    model = Conv4(1, 4, 16, 3)
    layout = FlatLayout.of(model)
    params = dict(model.named_parameters())
    flat = layout.flatten(params).detach()
    assert flat.shape == (sum(p.numel() for p in model.parameters()),) == (layout.n_coords,)
    views = layout.unflatten(flat)
    assert list(views) == list(params)
    for name, view in views.items():
        assert torch.equal(view, params[name])
        assert view.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()  # a view, no copy
    flat[0] = 123.0
    assert views[layout.names[0]].reshape(-1)[0] == 123.0


def test_unflatten_keeps_autograd_history():
    layout = FlatLayout.of(nn.Linear(3, 2))
    flat = torch.randn(layout.n_coords, requires_grad=True)
    views = layout.unflatten(flat)
    (views["weight"].sum() * 2 + views["bias"].sum()).backward()
    torch.testing.assert_close(flat.grad, torch.tensor([2.0] * 6 + [1.0] * 2))


def test_segments_of_a_conv4_follow_its_layers():
    model = Conv4(1, 4, 16, 3)
    names, sizes = FlatLayout.of(model).segments(layer_names(model))
    assert names == ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4", "head")
    conv = 4 * 4 * 9 + 4
    assert sizes == (1 * 4 * 9 + 4, 8, conv, 8, conv, 8, conv, 8, 4 * 3 + 3)


def test_segments_reject_interleaved_groups():
    layout = FlatLayout.of(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    groups = {"0.weight": "a", "0.bias": "b", "1.weight": "a", "1.bias": "b"}
    with pytest.raises(ValueError, match="not contiguous"):
        layout.segments(groups)
