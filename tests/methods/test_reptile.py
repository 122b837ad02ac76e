"""Reptile: the inner loop, the outer update, batch norm, evaluation and training."""

import copy
import json
import time
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

import fewshot
from fewshot.methods.inner_loop import (
    CarriedOptimizerState,
    functional_loss,
    minibatches,
    module_state,
    optimizer_adapt,
    sgd_adapt,
)
from fewshot.methods.reptile import INNER_STATE_KEY, Reptile, linear_factor, reptile_gradients
from fewshot.models.conv4 import Conv4
from fewshot.run.training import train
from tests.conftest import compose_config
from tests.methods.test_maml import random_episode
from tests.methods.test_protonet_learning import SHORT_RUN, pixel_nn_on_test_episodes


def small_reptile(**kwargs) -> Reptile:
    torch.manual_seed(0)
    settings = {"inner_optimizer": "sgd", "inner_lr": 0.1, "inner_steps": 3, **kwargs}
    return Reptile(Conv4(1, 8, 28, n_classes=5), **settings)


def test_reptile_gradient_is_theta_minus_mean_adapted_weights():
    theta = {"w": torch.tensor([1.0, 2.0])}
    adapted = [{"w": torch.tensor([3.0, 2.0])}, {"w": torch.tensor([1.0, 6.0])}]
    assert reptile_gradients(theta, adapted)["w"].tolist() == [-1.0, -2.0]


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_outer_update_with_sgd_equals_the_reptile_rule():
    eps = 0.3
    method = small_reptile(optimizer=partial(torch.optim.SGD, lr=eps))
    episode = random_episode(batch=3)
    theta = {k: v.detach().clone() for k, v in method.learner.named_parameters()}
    buffers = {k: v.clone() for k, v in method.learner.named_buffers()}
    adapted, _ = method.adapt_tasks(episode, meta_train=True)  # whole-support batches: deterministic

    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        inference_mode=False,
    )
    trainer.fit(method, train_dataloaders=DataLoader([episode], batch_size=None))
    assert method.global_step == 1
    # equal up to one float32 rounding (SGD's fused multiply-add)
    for name, p in method.learner.named_parameters():
        mean_phi = torch.stack([phi[name] for phi in adapted]).mean(0)
        assert torch.allclose(p, theta[name] + eps * (mean_phi - theta[name]), rtol=0, atol=1e-7), name
        assert torch.allclose(
            p, theta[name] + eps * torch.stack([phi[name] - theta[name] for phi in adapted]).mean(0), rtol=0, atol=1e-6
        ), name
    for name, b in method.learner.named_buffers():  # transductive BN: running stats untouched
        assert torch.equal(b, buffers[name]), name


def test_optimizer_adapt_with_sgd_equals_sgd_adapt():
    torch.manual_seed(0)
    model = Conv4(1, 8, 28, n_classes=5)
    x, y = torch.rand(10, 1, 28, 28), torch.arange(5).repeat_interleave(2)
    params, buffers = module_state(model, detach=True)
    by_optimizer = optimizer_adapt(model, params, buffers, x, y, 3, partial(torch.optim.SGD, lr=0.1))
    by_formula = sgd_adapt(model, params, buffers, x, y, 3, 0.1)
    for name in params:
        assert torch.allclose(by_optimizer[name], by_formula[name], atol=1e-6), name
        assert not by_optimizer[name].requires_grad


def test_carried_adam_state_continues_one_optimizer_across_tasks():
    """Two tasks adapted with a carried state are one Adam optimizer that keeps its moments
    and step count while the weights are reset to the initialisation between the tasks (the
    paper's code restores only the weights)."""
    torch.manual_seed(0)
    model = Conv4(1, 8, 28, n_classes=5)
    params, buffers = module_state(model, detach=True)
    tasks = [(torch.rand(10, 1, 28, 28), torch.arange(5).repeat_interleave(2)) for _ in range(2)]
    adam = partial(torch.optim.Adam, lr=0.01, betas=(0.0, 0.999))

    carried = CarriedOptimizerState()
    ours = [optimizer_adapt(model, params, buffers, x, y, 3, adam, carried=carried) for x, y in tasks]

    weights = {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}
    reference = adam(list(weights.values()))
    expected = []
    for x, y in tasks:
        with torch.no_grad():
            for name, w in weights.items():
                w.copy_(params[name])
        for _ in range(3):
            reference.zero_grad()
            functional_loss(model, weights, buffers, x, y).backward()
            reference.step()
        expected.append({name: w.detach().clone() for name, w in weights.items()})

    for got, want in zip(ours, expected):
        for name in params:
            assert torch.allclose(got[name], want[name], atol=1e-6), name
    assert all(float(state["step"]) == 6 for state in carried.state_dict().values())
    fresh = optimizer_adapt(model, params, buffers, *tasks[1], 3, adam)
    assert not all(torch.allclose(fresh[name], ours[1][name], atol=1e-6) for name in params)


def test_a_carried_state_only_read_is_left_as_it_was():
    torch.manual_seed(0)
    model = Conv4(1, 8, 28, n_classes=5)
    params, buffers = module_state(model, detach=True)
    x, y = torch.rand(10, 1, 28, 28), torch.arange(5).repeat_interleave(2)
    adam = partial(torch.optim.Adam, lr=0.01, betas=(0.0, 0.999))
    carried = CarriedOptimizerState()
    optimizer_adapt(model, params, buffers, x, y, 2, adam, carried=carried)
    before = copy.deepcopy(carried.state_dict())
    optimizer_adapt(model, params, buffers, x, y, 4, adam, carried=carried, keep_state=False)
    assert carried.state_dict().keys() == before.keys()
    for index, state in before.items():
        for key, value in state.items():
            assert torch.equal(carried.state_dict()[index][key], value), (index, key)


def test_reptile_carries_its_inner_adam_state_through_training_but_not_evaluation():
    method = small_reptile(optimizer=torch.optim.SGD, inner_optimizer="adam", inner_lr=0.001)
    assert method.carried_inner_state is not None and not method.carried_inner_state.state_dict()
    episode = random_episode(batch=3)
    method.adapt_tasks(episode, meta_train=True)
    trained = copy.deepcopy(method.carried_inner_state.state_dict())
    assert {float(state["step"]) for state in trained.values()} == {3 * 3.0}  # 3 tasks x 3 steps
    with torch.no_grad():
        method.adapt_tasks(episode, meta_train=False)
    for index, state in trained.items():
        assert float(method.carried_inner_state.state_dict()[index]["step"]) == float(state["step"])
        assert torch.equal(method.carried_inner_state.state_dict()[index]["exp_avg_sq"], state["exp_avg_sq"])
    assert small_reptile(optimizer=torch.optim.SGD, inner_optimizer_state="fresh").carried_inner_state is None


def test_minibatches_cycle_through_permutations():
    batches = minibatches(6, 4, 3, torch.Generator().manual_seed(0))
    flat = torch.cat(batches)
    assert [len(b) for b in batches] == [4, 4, 4]
    assert sorted(flat[:6].tolist()) == list(range(6))  # a whole pass before any repeat
    assert all(torch.equal(b, torch.arange(5)) for b in minibatches(5, None, 2))


def test_evaluation_is_deterministic_and_leaves_the_initialisation_alone():
    method = small_reptile(optimizer=torch.optim.SGD, eval_inner_steps=4, eval_inner_batch_size=3).eval()
    theta = {k: v.detach().clone() for k, v in method.state_dict().items()}
    episode = random_episode(n_shot=2)
    with torch.no_grad():  # as Lightning evaluates (inference_mode: false)
        first, second = method(episode), method(episode)
    assert first.shape == (2, 15, 5) and torch.equal(first, second)
    for name, value in method.state_dict().items():
        assert torch.equal(value, theta[name]), name


def adapted_copy(method: Reptile, phi: dict) -> torch.nn.Module:
    """A plain module holding the adapted weights, in training mode (batch statistics)."""
    learner = copy.deepcopy(method.learner).train()
    with torch.no_grad():
        for name, p in learner.named_parameters():
            p.copy_(phi[name])
    return learner


def test_support_plus_query_evaluation_classifies_each_query_with_the_support_set_alone():
    method = small_reptile(
        optimizer=torch.optim.SGD, eval_inner_steps=4, eval_inner_batch_size=3, eval_bn="support_plus_query"
    ).eval()
    episode = random_episode(n_shot=2, n_query=3)
    with torch.no_grad():
        logits = method(episode)
    transductive = small_reptile(
        optimizer=torch.optim.SGD, eval_inner_steps=4, eval_inner_batch_size=3, eval_bn="transductive"
    ).eval()
    with torch.no_grad():
        batched_logits = transductive(episode)
    assert logits.shape == batched_logits.shape == (2, 15, 5)
    for b in range(2):
        # the same adaptation (same seeded minibatches) as the transductive mode ...
        generator = torch.Generator().manual_seed(int(episode.index[b]))
        phi, _ = transductive.adapt_and_predict(
            episode.support_images[b], episode.support_labels[b], episode.query_images[b], 4, 3, generator
        )
        learner = adapted_copy(method, phi)
        support = episode.support_images[b]
        with torch.no_grad():
            # ... then every query scored in a batch of the whole support set plus that query
            manual = torch.stack([learner(torch.cat([support, q[None]]))[-1] for q in episode.query_images[b]])
            together = learner(episode.query_images[b])
        assert torch.allclose(logits[b], manual, atol=1e-5)
        assert torch.allclose(batched_logits[b], together, atol=1e-5)
        assert not torch.allclose(logits[b], batched_logits[b], atol=1e-3)  # the modes differ


def test_support_plus_query_logits_do_not_depend_on_the_other_queries():
    method = small_reptile(optimizer=torch.optim.SGD, eval_inner_steps=2, eval_bn="support_plus_query").eval()
    episode = random_episode(n_shot=1, n_query=3, batch=1)
    changed = episode.with_images(episode.support_images, episode.query_images.clone())
    changed.query_images[0, 1:] = torch.rand_like(changed.query_images[0, 1:])  # all but query 0
    with torch.no_grad():
        first, second = method(episode), method(changed)
    assert torch.equal(first[0, 0], second[0, 0])
    assert not torch.allclose(first[0, 1], second[0, 1])


def test_training_queries_are_scored_transductively_in_both_modes():
    episode = random_episode(n_shot=2, n_query=3, batch=1)
    logits = []
    for mode in ("transductive", "support_plus_query"):
        method = small_reptile(optimizer=torch.optim.SGD, eval_bn=mode)
        torch.manual_seed(1)
        logits.append(method.adapt_tasks(episode, meta_train=True)[1])
    assert torch.equal(logits[0], logits[1])


def test_adam_inner_optimizer_uses_beta1_zero_by_default():
    method = small_reptile(optimizer=torch.optim.SGD, inner_optimizer="adam")
    assert method.make_inner_optimizer([torch.zeros(1, requires_grad=True)]).defaults["betas"] == (0.0, 0.999)


def test_linear_annealing_factor():
    assert linear_factor(0, end=0.0, total=10) == 1.0
    assert linear_factor(5, end=0.0, total=10) == 0.5
    assert linear_factor(10, end=0.2, total=10) == pytest.approx(0.2)
    assert linear_factor(20, end=0.2, total=10) == pytest.approx(0.2)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="inner_optimizer"):
        small_reptile(optimizer=torch.optim.SGD, inner_optimizer="rmsprop")
    taken = r"model.eval_bn='inductive' \(not a batch-norm mode\) is not one Reptile takes; it takes 'transductive', "
    with pytest.raises(ValueError, match=taken + "'support_plus_query'"):
        small_reptile(optimizer=torch.optim.SGD, eval_bn="inductive")
    with pytest.raises(ValueError, match=r"model.train_bn='running' \(the running statistics .*\) is not one Reptile"):
        small_reptile(optimizer=torch.optim.SGD, train_bn="running")
    with pytest.raises(ValueError, match="either model.scheduler or model.outer_lr_final"):
        small_reptile(optimizer=torch.optim.SGD, scheduler=torch.optim.lr_scheduler.StepLR, outer_lr_final=0.0)
    states = r"model.inner_optimizer_state must be one of \('carried', 'fresh'\), got 'kept'"
    with pytest.raises(ValueError, match=states):
        small_reptile(optimizer=torch.optim.SGD, inner_optimizer_state="kept")


def test_fit_and_test_through_train(tiny_config, tmp_path):
    results = train(tiny_config("model=reptile", "model.eval_inner_steps=5"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == "Reptile" and saved["test"]["episodes"] == 6
    assert 0.0 <= saved["test"]["acc"] <= 1.0
    method = fewshot.load(results["checkpoint"])
    assert isinstance(method, Reptile)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4 and checkpoint["optimizer_states"]
    # annealed from 1.0 toward 0 over the 4 meta-updates
    assert checkpoint["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0)
    # the carried inner Adam state is saved with the weights and restored with them
    steps = {float(state["step"]) for state in checkpoint[INNER_STATE_KEY].values()}
    assert len(checkpoint[INNER_STATE_KEY]) == len(list(method.learner.parameters())) and len(steps) == 1
    assert steps.pop() > 0
    tested = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)[INNER_STATE_KEY]
    for index, state in tested.items():
        assert torch.equal(method.carried_inner_state.state_dict()[index]["exp_avg_sq"], state["exp_avg_sq"])


def test_train_n_way_different_from_n_way_is_a_clear_error(tiny_config):
    with pytest.raises(ValueError, match=r"data.n_way=5 outputs.*data.train_n_way=3.*Set data.train_n_way=null"):
        train(tiny_config("model=reptile", "data.train_n_way=3"))


def test_reptile_learns_on_embedded_default(tmp_path):
    cfg = compose_config(
        [
            *SHORT_RUN,
            "data=embedded",
            "data.train_episodes=300",
            "data.train_n_shot=3",
            "data.train_n_query=1",
            "data.meta_batch_size=5",
            "data.test_episodes=200",
            "data.source.train_classes=200",
            "data.source.val_classes=20",
            "data.source.test_classes=100",
            "model=reptile",
            "model.learner.hidden=32",
            "model.inner_lr=0.01",
            "model.eval_inner_steps=5",
            "model.eval_inner_batch_size=null",
            # calibrated with transductive evaluation; support_plus_query is pinned by its own tests
            "model.eval_bn=transductive",
        ],
        tmp_path,
    )
    pixel_nn = pixel_nn_on_test_episodes(cfg, 200)
    started = time.perf_counter()
    results = train(cfg)
    acc = results["test"]["acc"]
    print(
        f"embedded 5-way 1-shot: Reptile {acc:.3f}, raw-pixel NN {pixel_nn:.3f}, {time.perf_counter() - started:.0f} s"
    )
    assert acc > 0.6
    assert acc > pixel_nn + 0.15
