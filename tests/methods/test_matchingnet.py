"""Matching Networks: attention over the support, full-context embeddings, batching, learning."""

import json
import math

import pytest
import torch
from torch import nn

from fewshot.data.episode import Episode
from fewshot.methods.matchingnet import (
    AttentionLSTM,
    MatchingNetwork,
    canonical_order,
    class_log_probabilities,
    class_sum_log_probabilities,
    cosine_similarities,
    episode_batch_norm,
)
from fewshot.models.conv4 import Conv4
from fewshot.run.training import train
from tests.conftest import compose_config
from tests.helpers import assert_batched_equals_per_episode
from tests.methods.test_protonet_learning import learned_and_pixel_nn_accuracy


class Identity(nn.Module):
    """Flattens the images: the embedding of a ``[C, 1, 1]`` image is its C values."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, x):
        return x.flatten(1)


def vector_episode(support, support_labels, query, query_labels, n_way) -> Episode:
    """A one-episode batch whose images are the given vectors as ``[D, 1, 1]`` images."""
    s, q = torch.tensor(support), torch.tensor(query)
    return Episode(
        s.view(1, len(s), -1, 1, 1),
        torch.tensor([support_labels]),
        q.view(1, len(q), -1, 1, 1),
        torch.tensor([query_labels]),
        n_way,
        torch.tensor([0]),
    )


def conv_episode(batch: int = 1, n_way: int = 3, n_shot: int = 2, n_query: int = 2, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    return Episode(
        torch.rand(batch, n_way * n_shot, 1, 16, 16, generator=g),
        torch.arange(n_way).repeat_interleave(n_shot).expand(batch, -1),
        torch.rand(batch, n_way * n_query, 1, 16, 16, generator=g),
        torch.arange(n_way).repeat_interleave(n_query).expand(batch, -1),
        n_way,
        torch.arange(batch),
    )


def conv_matching_net(**kwargs) -> MatchingNetwork:
    torch.manual_seed(0)
    return MatchingNetwork(Conv4(1, 8, 16), optimizer=torch.optim.Adam, **kwargs).eval()


def permuted(episode: Episode, order: torch.Tensor) -> Episode:
    return Episode(
        episode.support_images[:, order],
        episode.support_labels[:, order],
        episode.query_images,
        episode.query_labels,
        episode.n_way,
        episode.index,
    )


def test_class_probabilities_sum_to_one_over_classes():
    scores = torch.randn(2, 7, 6) * 5
    labels = torch.tensor([[0, 0, 1, 1, 2, 2], [2, 1, 0, 2, 1, 0]])
    probabilities = class_log_probabilities(scores, labels, 3).exp()
    assert probabilities.shape == (2, 7, 3)
    assert torch.allclose(probabilities.sum(-1), torch.ones(2, 7), atol=1e-6)
    logits = conv_matching_net(fce=True)(conv_episode(batch=2))
    assert torch.allclose(logits.exp().sum(-1), torch.ones(2, 6), atol=1e-5)


def test_class_probability_is_the_attention_mass_on_the_class():
    scores = torch.tensor([[[1.0, 2.0, 3.0]]])
    attention = scores.softmax(-1)[0, 0]
    log_p = class_log_probabilities(scores, torch.tensor([[1, 0, 1]]), 2)[0, 0]
    assert log_p.exp().tolist() == pytest.approx([attention[1].item(), (attention[0] + attention[2]).item()])


def test_identity_embedding_predicts_the_label_of_the_most_cosine_similar_support():
    episode = vector_episode(
        support=[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]],
        support_labels=[0, 1, 1],
        query=[[1.0, 0.2], [0.1, 5.0], [-1.0, -0.5]],
        query_labels=[0, 1, 1],
        n_way=2,
    )
    method = MatchingNetwork(Identity(2), optimizer=torch.optim.Adam)
    log_p = method(episode)
    assert log_p.shape == (1, 3, 2)
    assert log_p.argmax(-1).tolist() == [[0, 1, 1]]
    # golden value for the first query: cosines 1/sqrt(1.04), 0.2/sqrt(1.04), -1/sqrt(1.04)
    c = [1 / math.sqrt(1.04), 0.2 / math.sqrt(1.04), -1 / math.sqrt(1.04)]
    z = sum(math.exp(v) for v in c)
    assert log_p[0, 0].exp().tolist() == pytest.approx([math.exp(c[0]) / z, (math.exp(c[1]) + math.exp(c[2])) / z])
    assert torch.allclose(
        cosine_similarities(torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[1.0, 0.0]]])), torch.tensor(0.6)
    )


def test_attention_lstm_one_step_follows_the_papers_equations():
    torch.manual_seed(0)
    lstm = AttentionLSTM(dim=4, steps=1)
    queries, support = torch.randn(1, 2, 4), torch.randn(1, 3, 4)
    # h_0 = c_0 = 0, so the first read r_0 is the uniform average of g(S)
    read = support.mean(1, keepdim=True).expand(1, 2, 4)
    gates = lstm.input_gates(queries) + lstm.recurrent_gates(torch.cat([torch.zeros_like(queries), read], -1))
    i, f, g, o = gates.chunk(4, -1)
    expected = o.sigmoid() * (i.sigmoid() * g.tanh()).tanh() + queries
    assert torch.allclose(lstm(queries, support), expected, atol=1e-6)


def test_canonical_order_sorts_by_label_and_ignores_the_given_order():
    episode = conv_episode(n_way=3, n_shot=3)
    order = canonical_order(episode.support_images, episode.support_labels)
    assert episode.support_labels.gather(1, order).tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2]]
    shuffle = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    again = canonical_order(episode.support_images[:, shuffle], episode.support_labels[:, shuffle])
    assert torch.equal(shuffle[again], order)


def test_fce_permuting_the_support_permutes_its_embeddings_and_keeps_the_predictions():
    method = conv_matching_net(fce=True)
    episode = conv_episode(n_way=3, n_shot=2)
    shuffle = torch.tensor([3, 0, 5, 1, 4, 2])
    support, queries = method.embed(episode)
    support_p, queries_p = method.embed(permuted(episode, shuffle))
    assert torch.allclose(support_p, support[:, shuffle], atol=1e-5)
    assert torch.allclose(queries_p, queries, atol=1e-5)
    assert torch.allclose(method(permuted(episode, shuffle)), method(episode), atol=1e-5)


def test_fce_in_episode_order_depends_on_the_order():
    method = conv_matching_net(fce=True, support_order="episode")
    episode = conv_episode(n_way=3, n_shot=2)
    shuffle = torch.tensor([3, 0, 5, 1, 4, 2])
    support, _ = method.embed(episode)
    support_p, _ = method.embed(permuted(episode, shuffle))
    assert not torch.allclose(support_p, support[:, shuffle], atol=1e-4)


@pytest.mark.parametrize("fce", [False, True])
def test_support_embeddings_depend_on_the_other_support_items_only_with_fce(fce):
    method = conv_matching_net(fce=fce)
    episode = conv_episode(n_way=3, n_shot=2)
    changed_images = episode.support_images.clone()
    changed_images[:, 0] = torch.rand_like(changed_images[:, 0])
    changed = episode.with_images(changed_images, episode.query_images)
    before, _ = method.embed(episode)
    after, _ = method.embed(changed)
    others_equal = torch.allclose(after[:, 1:], before[:, 1:], atol=1e-6)
    assert others_equal != fce


@pytest.mark.parametrize("fce", [False, True])
def test_batched_forward_equals_per_episode_forward_in_eval_mode(fce):
    method = conv_matching_net(fce=fce)
    batch = conv_episode(batch=3, n_way=5, n_shot=2, n_query=3)
    assert method(batch).shape == (3, 15, 5)
    assert_batched_equals_per_episode(method, batch)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"support_order": "random"}, "support_order must be one of"),
        ({"train_bn": "running"}, r"train_bn='running' .* not one MatchingNetwork takes; it takes 'joint', 'tr"),
        ({"eval_bn": "batch"}, r"model.eval_bn='batch' \(not a batch-norm mode\) is not one MatchingNetwork takes"),
        ({"grad_clip_params": "lstm"}, r"grad_clip_params must be one of \('attention_lstm', 'fce_lstms', 'all'\)"),
        ({"readout": "softmax"}, r"readout must be one of \('attention', 'class_sum'\)"),
        ({"cosine_scale": 0.0}, "cosine_scale must be positive"),
        ({"grad_clip_norm": -1.0}, "grad_clip_norm must be positive or null"),
    ],
)
def test_bad_option_values_are_rejected_naming_the_allowed_ones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MatchingNetwork(Identity(2), optimizer=torch.optim.Adam, **kwargs)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="out_features"):
        MatchingNetwork(nn.Flatten(), optimizer=torch.optim.Adam, fce=True)
    with pytest.raises(ValueError, match="fce_steps"):
        MatchingNetwork(Identity(2), optimizer=torch.optim.Adam, fce=True, fce_steps=0)


@pytest.mark.parametrize(("model", "name"), [("matchingnet", "MatchingNet"), ("matchingnet_fce", "MatchingNet-FCE")])
def test_fit_and_test_through_train(tiny_config, tmp_path, model, name):
    results = train(tiny_config(f"model={model}"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == name and results["test"]["episodes"] == 6
    assert 0.0 <= results["test"]["acc"] <= 1.0


def test_fce_config_sets_fce_and_its_learning_rate(tmp_path):
    cfg = compose_config(["model=matchingnet_fce"], tmp_path)
    assert cfg.model.fce is True and cfg.model.optimizer.lr == 1e-4
    assert cfg.model.backbone == compose_config(["model=matchingnet"], tmp_path).model.backbone


def test_matching_net_learns_on_embedded_default(tmp_path):
    acc, pixel_nn = learned_and_pixel_nn_accuracy("matchingnet", tmp_path)
    # measured: 0.696 vs raw-pixel NN 0.443 (chance 0.2)
    assert acc > 0.60
    assert acc > pixel_nn + 0.15


# -- the settings of Ravi & Larochelle's code (issue 16 item 8) and the evaluation batch norm (issue 18) --


def test_conv4_dropout_follows_every_max_pool_and_is_active_only_in_training():
    torch.manual_seed(0)
    plain, dropped = Conv4(1, 8, 16), Conv4(1, 8, 16, dropout=0.1)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    for block in dropped.features:
        assert isinstance(block[-2], nn.MaxPool2d) and isinstance(block[-1], nn.Dropout) and block[-1].p == 0.1
    dropped.load_state_dict(plain.state_dict())  # dropout adds no parameter or buffer
    x = torch.rand(6, 1, 16, 16)
    dropped.train()
    assert not torch.equal(dropped(x), dropped(x))
    dropped.eval()
    plain.load_state_dict(dropped.state_dict())  # the running statistics moved in training mode
    plain.eval()
    assert torch.equal(dropped(x), dropped(x)) and torch.allclose(dropped(x), plain(x))
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        Conv4(1, 8, 16, dropout=1.0)


def test_transductive_training_bn_shares_the_weights_and_keeps_two_sets_of_running_statistics():
    torch.manual_seed(0)
    joint = MatchingNetwork(Conv4(1, 8, 16), optimizer=torch.optim.Adam)
    torch.manual_seed(0)
    separate = MatchingNetwork(Conv4(1, 8, 16), optimizer=torch.optim.Adam, train_bn="transductive")
    assert sum(p.numel() for p in separate.parameters()) == sum(p.numel() for p in joint.parameters())
    for a, b in zip(separate.backbone.parameters(), separate.query_backbone.parameters(), strict=True):
        assert a is b
    episode = conv_episode(n_way=3, n_shot=1, n_query=4)
    separate.train()
    support, queries = separate.embed(episode)
    # each half is normalised with its own batch statistics ...
    assert torch.allclose(support[0], separate.backbone(episode.support_images[0]), atol=1e-6)
    assert torch.allclose(queries[0], separate.query_backbone(episode.query_images[0]), atol=1e-6)
    # ... and updates its own running statistics
    bn_support, bn_query = separate.backbone.features[0][1], separate.query_backbone.features[0][1]
    assert not torch.allclose(bn_support.running_mean, bn_query.running_mean)
    # the joint mode normalises support and queries together: the support depends on the queries
    joint.train()
    other_queries = episode.with_images(episode.support_images, torch.rand_like(episode.query_images))
    assert not torch.allclose(joint.embed(episode)[0], joint.embed(other_queries)[0], atol=1e-5)
    assert torch.allclose(separate.embed(episode)[0], separate.embed(other_queries)[0], atol=1e-6)
    # a training step moves both copies' weights at once
    separate.query_backbone.features[0][0].weight.data.add_(1.0)
    assert torch.equal(separate.backbone.features[0][0].weight, separate.query_backbone.features[0][0].weight)


@pytest.mark.parametrize("bn_mode", ["joint", "transductive"])
def test_batch_statistics_in_evaluation_use_the_batch_and_leave_the_running_statistics(bn_mode):
    method = conv_matching_net(train_bn=bn_mode, eval_bn=bn_mode)
    episode = conv_episode(n_way=3, n_shot=2, n_query=2)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.eval()
    evaluated = method(episode)
    for key, value in method.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(m.training for m in method.modules())
    running = conv_matching_net(train_bn=bn_mode).eval()(episode)
    assert not torch.allclose(evaluated, running, atol=1e-4)
    # the batch statistics are those of training mode (no dropout here)
    method.train()
    assert torch.allclose(evaluated, method(episode), atol=1e-5)


@pytest.mark.parametrize(("train_bn", "eval_bn"), [("joint", "transductive"), ("transductive", "joint")])
def test_evaluation_batches_support_and_queries_as_eval_bn_says_whatever_the_training_mode(train_bn, eval_bn):
    method = conv_matching_net(train_bn=train_bn, eval_bn=eval_bn).eval()
    episode = conv_episode(n_way=3, n_shot=2, n_query=2)
    other_queries = episode.with_images(episode.support_images, torch.rand_like(episode.query_images))
    with torch.no_grad():
        support, _ = method.embed(episode)
        support_beside_others, _ = method.embed(other_queries)
    # joint: the support shares its statistics with the queries; transductive: it has its own
    assert torch.allclose(support, support_beside_others, atol=1e-6) is (eval_bn == "transductive")


def test_episode_batch_norm_restores_modes_and_momentum():
    net = Conv4(1, 4, 16, dropout=0.5).eval()
    with episode_batch_norm(net):
        norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(m.training and m.momentum == 0.0 for m in norms)
        assert not any(m.training for m in net.modules() if isinstance(m, nn.Dropout))
    assert not any(m.training for m in net.modules()) and all(m.momentum == 0.1 for m in norms)


def test_class_sum_readout_is_a_softmax_over_classes_of_summed_cosines():
    scores = torch.tensor([[[0.9, 0.1, 0.4, 0.3]]])
    labels = torch.tensor([[0, 0, 1, 1]])
    log_p = class_sum_log_probabilities(scores, labels, 2)[0, 0]
    z = math.exp(1.0) + math.exp(0.7)
    assert log_p.exp().tolist() == pytest.approx([math.exp(1.0) / z, math.exp(0.7) / z])
    assert not torch.allclose(log_p, class_log_probabilities(scores, labels, 2)[0, 0])
    one_shot = torch.randn(2, 5, 3)
    one_shot_labels = torch.tensor([[2, 0, 1], [0, 1, 2]])
    assert torch.allclose(
        class_sum_log_probabilities(one_shot, one_shot_labels, 3),
        class_log_probabilities(one_shot, one_shot_labels, 3),
        atol=1e-6,
    )
    method = conv_matching_net(readout="class_sum")
    assert torch.allclose(method(conv_episode(batch=2)).exp().sum(-1), torch.ones(2, 6), atol=1e-5)


def test_cosine_scale_multiplies_the_similarities_and_is_learned_only_when_asked():
    episode = vector_episode([[1.0, 0.0], [0.0, 1.0]], [0, 1], [[1.0, 1.0]], [0], 2)
    scaled = MatchingNetwork(Identity(2), optimizer=torch.optim.Adam, cosine_scale=10.0)
    # equal cosines give equal probabilities whatever the scale; an unequal pair sharpens
    assert scaled(episode).exp()[0, 0].tolist() == pytest.approx([0.5, 0.5])
    episode = vector_episode([[1.0, 0.0], [0.0, 1.0]], [0, 1], [[1.0, 0.0]], [0], 2)
    assert scaled(episode).exp()[0, 0, 0].item() == pytest.approx(math.exp(10) / (math.exp(10) + 1))
    assert "cosine_scale" not in scaled.state_dict()
    assert not any(p.ndim == 0 for p in scaled.parameters())
    learned = MatchingNetwork(Identity(2), optimizer=torch.optim.Adam, cosine_scale=5.0, learn_scale=True)
    assert isinstance(learned.cosine_scale, nn.Parameter) and learned.cosine_scale.item() == 5.0
    loss = -learned(episode)[0, 0, 0]
    loss.backward()
    assert learned.cosine_scale.grad is not None and learned.cosine_scale.grad.item() < 0  # larger scale, lower loss


@pytest.mark.parametrize("clip_support", [False, True])
def test_fce_clip_scales_each_lstm_gradient_to_the_norm(clip_support):
    params = "fce_lstms" if clip_support else "attention_lstm"
    method = conv_matching_net(fce=True, grad_clip_norm=0.25, grad_clip_params=params).train()
    loss = -1e3 * method(conv_episode(n_way=3, n_shot=2)).sum()
    loss.backward()

    def norm(module):
        return torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None]).norm().item()

    support_before, backbone_before = norm(method.support_encoder), norm(method.backbone)
    assert norm(method.query_encoder) > 0.25 and support_before > 0.25 and backbone_before > 0.25
    method.on_before_optimizer_step(None)
    assert norm(method.query_encoder) == pytest.approx(0.25, rel=1e-4)
    assert norm(method.support_encoder) == (pytest.approx(0.25, rel=1e-4) if clip_support else support_before)
    assert norm(method.backbone) == backbone_before


def test_clip_of_all_parameters_scales_their_one_norm():
    method = conv_matching_net(fce=True, grad_clip_norm=0.25, grad_clip_params="all").train()
    (-1e3 * method(conv_episode(n_way=3, n_shot=2)).sum()).backward()
    assert torch.stack([p.grad.norm() for p in method.parameters() if p.grad is not None]).norm().item() > 0.25
    method.on_before_optimizer_step(None)
    norm = torch.stack([p.grad.norm() for p in method.parameters() if p.grad is not None]).norm().item()
    assert norm == pytest.approx(0.25, rel=1e-4)


def test_no_clip_without_grad_clip_norm():
    method = conv_matching_net(fce=True).train()
    (-1e3 * method(conv_episode()).sum()).backward()
    grads = [p.grad.clone() for p in method.query_encoder.parameters()]
    method.on_before_optimizer_step(None)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, method.query_encoder.parameters(), strict=True))


def test_fce_clip_is_applied_in_a_lightning_training_step(tiny_config, monkeypatch):
    calls = []
    original = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return original(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    train(tiny_config("model=matchingnet_fce"))
    assert calls and set(calls) == {0.25}


# the values that define the Mini-ImageNet experiments, with their source in Ravi & Larochelle's code
# (twitter/meta-learning-lstm)
CODE_SETTINGS = {
    "model.backbone.hidden": (64, "model/matching-net-classifier.lua: nFilters = 64"),
    "model.backbone.dropout": (0.1, "config/baselines/train-matching-net.lua useDropout; Dropout(0.1)"),
    "model.backbone.bn_eps": (1e-3, "model/matching-net-classifier.lua: SpatialBatchNormalization(n, 1e-3)"),
    "model.backbone.bn_momentum": (0.1, "torch7 SpatialBatchNormalization default momentum"),
    "model.optimizer.lr": (1e-4, "config/baselines/train-matching-net.lua: learningRate = 0.0001"),
    "model.train_bn": ("transductive", "model/baselines/simple-embedding.lua: two nets, one set of weights"),
    "model.eval_bn": ("running", "model.set('evaluate') before validation and test"),
    "model.readout": ("class_sum", "model/baselines/matching-net.lua: log-softmax of summed cosines"),
    "model.cosine_scale": (1.0, "model/baselines/matching-net.lua: nn.CosineDistance, no scale"),
    "model.learn_scale": (False, "model/baselines/matching-net.lua: no scale"),
    "model.fce_steps": (3, "config/baselines/train-matching-net.lua: steps = 3"),
    "episodes": (75000, "config/baselines/train-matching-net.lua: nEpisode = 75000"),
    "data.n_query": (15, "15 queries per class"),
}


@pytest.mark.parametrize("experiment", ["matchingnet", "matchingnet_fce"])
@pytest.mark.parametrize("shots", [1, 5])
def test_miniimagenet_presets_use_the_settings_of_ravi_and_larochelles_code(tmp_path, experiment, shots):
    from omegaconf import OmegaConf

    cfg = compose_config([f"experiment=miniimagenet/{experiment}_5w{shots}s"], tmp_path)
    for key, (expected, source) in CODE_SETTINGS.items():
        value = cfg.data.train_episodes * cfg.trainer.max_epochs if key == "episodes" else OmegaConf.select(cfg, key)
        assert value == expected, f"{key} = {value}, expected {expected} ({source})"
    assert cfg.model.fce is (experiment == "matchingnet_fce") and cfg.data.n_shot == shots
    # FCE-embedding.lua: maxGradNorm 0.25 on the attention LSTM (its bi-LSTM clip reads no gradient)
    assert cfg.model.grad_clip_norm == (0.25 if experiment == "matchingnet_fce" else None)
    assert cfg.model.grad_clip_params == "attention_lstm"
    assert cfg.trainer.gradient_clip_val is None


@pytest.mark.parametrize(
    "experiment",
    [f"omniglot/matchingnet{fce}_{shape}" for fce in ("", "_fce") for shape in ("5w1s", "5w5s", "20w1s", "20w5s")],
)
def test_omniglot_presets_keep_the_papers_unscaled_cosine_attention(tmp_path, experiment):
    cfg = compose_config([f"experiment={experiment}"], tmp_path)
    m = cfg.model
    assert (m.cosine_scale, m.learn_scale, m.readout) == (1.0, False, "attention")
    assert (m.train_bn, m.eval_bn, m.backbone.dropout, m.backbone.hidden) == ("joint", "running", 0.0, 64)
    assert m.optimizer.lr == (1e-4 if m.fce else 1e-3)
    assert m.grad_clip_norm == (0.25 if m.fce else None)
