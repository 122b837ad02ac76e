"""Every paper preset pinned: the values that define each experiment, with their source.

A preset that drifts from its source (a default changed underneath it, a copy edited) fails
here. Each row is ``dotted config key: (expected value, source)``; the source names the file of
the official code or the paper section the value comes from, or "ours" for a deliberate
deviation listed in docs/reproduce.md ("Deviations").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from tests.conftest import PROJECT_ROOT, compose_config

RAVI_1SHOT = "twitter/meta-learning-lstm config/lstm/train-imagenet-1shot.lua"
RAVI_5SHOT = "twitter/meta-learning-lstm config/lstm/train-imagenet-5shot.lua"
RAVI_LEARNER = "twitter/meta-learning-lstm model/lstm/meta-learner-lstm.lua"
RAVI_PAPER = "Ravi & Larochelle 2017, section 4"

META_LSTM_MINI = {
    "data.image_size": (84, RAVI_PAPER),
    "data.mean": (None, "twitter/meta-learning-lstm: pixels / 255 only"),
    "data.std": (None, "twitter/meta-learning-lstm: pixels / 255 only"),
    "data.n_way": (5, RAVI_PAPER),
    "data.n_query": (15, RAVI_PAPER),
    "data.test_episodes": (600, RAVI_PAPER),
    "data.val_episodes": (100, RAVI_1SHOT + " nValidationEpisode"),
    "data.train_episodes": (1000, RAVI_1SHOT + " printPer (validation every 1,000 episodes)"),
    "data.meta_batch_size": (1, RAVI_LEARNER),
    "model.learner.hidden": (32, RAVI_PAPER),
    "model.learner.bn_eps": (0.001, "twitter/meta-learning-lstm model/lstm-classifier.lua"),
    "model.hidden_size": (20, RAVI_PAPER),
    "model.preprocess_p": (10.0, RAVI_PAPER),
    "model.grad_scale": ("official", RAVI_LEARNER),
    "model.grad_clip_norm": (0.25, RAVI_1SHOT + " maxGradNorm"),
    "model.optimizer._target_": ("torch.optim.Adam", RAVI_1SHOT + " optimMethod"),
    "model.optimizer.lr": (0.001, RAVI_1SHOT + " learningRate"),
    "model.train_bn": ("batch", RAVI_PAPER),
    "model.eval_bn": ("support", RAVI_PAPER),
    "test_checkpoint": ("last", "twitter/meta-learning-lstm config/lstm/test-lstm.lua (a saved final snapshot)"),
}

RAVI_BASELINES = "twitter/meta-learning-lstm final baseline configs (config/baselines/)"
RAVI_MATCHING = "twitter/meta-learning-lstm config/baselines/train-matching-net.lua"
RAVI_MATCHING_MODEL = "twitter/meta-learning-lstm model/matching-net-classifier.lua, model/baselines/*.lua"
FINN = "Finn et al. 2017, appendix A.1 (cbfinn/maml main.py)"
NICHOL = "openai/supervised-reptile README commands (Nichol et al. 2018)"
SNELL = "Snell et al. 2017, sections 3.1-3.2"
OURS = "ours (docs/reproduce.md, Deviations)"
OURS_CPU = "ours: a CPU budget (docs/reproduce.md, Deviations)"

Pins = dict[str, tuple[Any, str]]


def shape(n_way: int, n_shot: int, source: str) -> Pins:
    """The evaluation episode shape (15 queries per class in every preset) and test set size."""
    return {
        "data.n_way": (n_way, source),
        "data.n_shot": (n_shot, source),
        "data.n_query": (15, source),
        "data.test_episodes": (600, source),
    }


PRETRAINED = {
    "model.backbone.hidden": (64, RAVI_BASELINES + " nFilters = 64"),
    "model.backbone.bn_eps": (0.001, RAVI_BASELINES + " SpatialBatchNormalization(n, 1e-3)"),
    "model.optimizer._target_": ("torch.optim.Adam", RAVI_BASELINES),
    "model.optimizer.lr": (0.001, RAVI_BASELINES),
    "model.scheduler": (None, RAVI_BASELINES),
    "data.image_batch_size": (64, RAVI_BASELINES),
}
FINETUNE_GRID = {
    "model.grid.lr": ([0.5, 0.1, 0.01, 0.001, 0.0001, 0.00001], RAVI_BASELINES),
    "model.grid.decay": ([1.0, 0.1, 0.01, 0.001, 0.0001, 0.00001, 0.0], RAVI_BASELINES),
    "model.grid.updates": ([15], RAVI_BASELINES + " (a fixed number of updates)"),
}
MINI_PRETRAINED = {
    **PRETRAINED,
    "data.val_episodes": (100, RAVI_BASELINES),
    "trainer.max_steps": (30000, RAVI_BASELINES + " (30,000 iterations)"),
    "test_checkpoint": ("last", RAVI_BASELINES + " (the network at the end of pre-training)"),
}
MINI_MATCHING = {
    "model.backbone.hidden": (64, RAVI_MATCHING_MODEL + " nFilters = 64"),
    "model.backbone.dropout": (0.1, RAVI_MATCHING + " useDropout"),
    "model.backbone.bn_eps": (0.001, RAVI_MATCHING_MODEL),
    "model.bn_mode": ("separate", RAVI_MATCHING_MODEL + " (two embedding nets, shared weights)"),
    "model.readout": ("class_sum", "twitter/meta-learning-lstm model/baselines/matching-net.lua"),
    "model.optimizer.lr": (0.0001, RAVI_MATCHING + " learningRate"),
    "data.val_episodes": (100, RAVI_MATCHING + " nValidationEpisode"),
    "trainer.max_epochs": (75, RAVI_MATCHING + " nEpisode = 75000 (x 1,000 per epoch)"),
    "data.train_episodes": (1000, RAVI_MATCHING + " printPer"),
    "test_checkpoint": ("last", "twitter/meta-learning-lstm model/baselines/matching-net.lua"),
}
MINI_MAML = {
    "model.learner.hidden": (32, FINN),
    "model.inner_steps": (5, FINN),
    "model.eval_inner_steps": (10, FINN),
    "model.inner_lr": (0.01, FINN),
    "model.optimizer.lr": (0.001, FINN),
    "model.bn_mode": ("transductive", FINN),
    "trainer.max_epochs": (60, FINN + " 60,000 meta-updates"),
    "test_checkpoint": ("last", FINN + " (the model after the last meta-update)"),
}
MINI_REPTILE = {
    "model.learner.hidden": (32, NICHOL),
    "data.train_n_shot": (15, NICHOL + " --train-shots 15"),
    "model.inner_steps": (8, NICHOL + " --inner-iters 8"),
    "model.inner_batch_size": (10, NICHOL + " --inner-batch 10"),
    "model.inner_lr": (0.001, NICHOL + " --learning-rate 0.001"),
    "model.eval_inner_steps": (50, NICHOL + " --eval-iters 50"),
    "data.meta_batch_size": (5, NICHOL + " --meta-batch 5"),
    "model.optimizer.lr": (1.0, NICHOL + " --meta-step 1"),
    "model.outer_lr_final": (0.0, NICHOL + " --meta-step-final 0"),
    "model.bn_mode": ("non_transductive", NICHOL + " (no --transductive)"),
    "model.inner_optimizer_state": ("carried", NICHOL + " (only the weights are restored between tasks)"),
    "trainer.max_epochs": (100, NICHOL + " --meta-iters 100000 (5,000 episodes / 5 per epoch)"),
    "test_checkpoint": ("last", NICHOL),
}
MINI_PROTONET = {
    "model.backbone.hidden": (64, SNELL),
    "model.optimizer.lr": (0.001, SNELL),
    "model.scheduler.step_size": (2, SNELL + " (lr halved every 2,000 episodes)"),
    "model.scheduler.gamma": (0.5, SNELL),
    "test_checkpoint": ("best", SNELL + " (model chosen on validation)"),
}
OMNIGLOT_MAML_5WAY = {
    "model.learner.hidden": (64, FINN),
    "model.inner_steps": (1, FINN),
    "model.eval_inner_steps": (3, FINN),
    "model.inner_lr": (0.4, FINN),
    "data.meta_batch_size": (32, FINN),
    "trainer.max_epochs": (2, OURS_CPU),
}
OMNIGLOT_MAML_20WAY = {
    "model.learner.hidden": (64, FINN),
    "model.inner_steps": (5, FINN),
    "model.eval_inner_steps": (5, FINN),
    "model.inner_lr": (0.1, FINN),
    "data.meta_batch_size": (16, FINN),
    "trainer.max_epochs": (2, OURS_CPU),
}
OMNIGLOT_REPTILE_5WAY = {
    "data.train_n_shot": (10, NICHOL),
    "model.inner_steps": (5, NICHOL),
    "model.inner_batch_size": (10, NICHOL),
    "model.inner_lr": (0.001, NICHOL),
    "model.eval_inner_steps": (50, NICHOL),
    "model.eval_inner_batch_size": (5, NICHOL),
    "data.meta_batch_size": (5, NICHOL),
    "model.bn_mode": ("non_transductive", NICHOL),
    "model.inner_optimizer_state": ("carried", NICHOL),
}
OMNIGLOT_REPTILE_20WAY = {
    **OMNIGLOT_REPTILE_5WAY,
    "model.inner_steps": (10, NICHOL),
    "model.inner_batch_size": (20, NICHOL),
    "model.inner_lr": (0.0005, NICHOL),
    "model.eval_inner_batch_size": (10, NICHOL),
}
OMNIGLOT_PROTONET = {
    "data.train_n_way": (60, SNELL + " (60-way training episodes)"),
    "data.train_n_query": (5, SNELL),
    "model.scheduler.step_size": (4, SNELL + " (lr halved every 2,000 episodes = 4 epochs of 500)"),
}
OMNIGLOT_META_LSTM = {
    "model.learner.hidden": (64, OURS),
    "model.grad_scale": ("official", RAVI_LEARNER),
    "model.grad_clip_norm": (0.25, RAVI_1SHOT),
    "model.optimizer.lr": (0.001, RAVI_1SHOT),
    "trainer.max_epochs": (4, OURS_CPU),
    "test_checkpoint": ("best", OURS),
}
OMNIGLOT_MATCHING = {
    "model.backbone.hidden": (64, "Vinyals et al. 2016 (Conv-4, 64 filters)"),
    "model.readout": ("attention", "Vinyals et al. 2016, equation 1"),
    "model.cosine_scale": (1.0, "Vinyals et al. 2016 (plain cosine)"),
}


def family(name: str, shots: tuple[int, ...], ways: tuple[int, ...], base: Pins, **by_way: Pins) -> dict[str, Pins]:
    """``<name>_<N>w<K>s`` rows: the shape plus ``base`` (or the way-specific pins of ``by_way``)."""
    dataset = name.split("/")[0]
    source = RAVI_PAPER if dataset == "miniimagenet" else OURS
    rows = {}
    for n_way in ways:
        for n_shot in shots:
            pins = by_way.get(f"w{n_way}", base)
            rows[f"{name}_{n_way}w{n_shot}s"] = {**shape(n_way, n_shot, source), **pins}
    return rows


PINNED: dict[str, dict[str, tuple[Any, str]]] = {
    "miniimagenet/meta_lstm_5w1s": {
        **META_LSTM_MINI,
        "data.n_shot": (1, RAVI_PAPER),
        "model.n_steps": (12, RAVI_1SHOT + " nEpochs[1]"),
        "model.learner.bn_momentum": (0.9, RAVI_1SHOT + " BN_momentum"),
        "trainer.max_epochs": (75, RAVI_1SHOT + " nEpisode = 75000"),
    },
    "miniimagenet/meta_lstm_5w5s": {
        **META_LSTM_MINI,
        "data.n_shot": (5, RAVI_PAPER),
        "model.n_steps": (8, RAVI_5SHOT + " nEpochs[5]"),
        "model.learner.bn_momentum": (0.95, RAVI_5SHOT + " BN_momentum"),
        "trainer.max_epochs": (50, RAVI_5SHOT + " nEpisode = 50000"),
    },
    **family("miniimagenet/baseline_nn", (1, 5), (5,), {**MINI_PRETRAINED, "model.metric": ("cosine", RAVI_PAPER)}),
    **family(
        "miniimagenet/baseline_finetune",
        (1, 5),
        (5,),
        {**MINI_PRETRAINED, **FINETUNE_GRID, "model.grid_episodes": (100, RAVI_BASELINES)},
    ),
    **family("miniimagenet/matchingnet", (1, 5), (5,), MINI_MATCHING),
    **family(
        "miniimagenet/matchingnet_fce", (1, 5), (5,), {**MINI_MATCHING, "model.fce_clip_norm": (0.25, RAVI_MATCHING)}
    ),
    **family("miniimagenet/maml", (1,), (5,), {**MINI_MAML, "data.meta_batch_size": (4, FINN)}),
    **family("miniimagenet/maml", (5,), (5,), {**MINI_MAML, "data.meta_batch_size": (2, FINN)}),
    **family(
        "miniimagenet/fomaml",
        (1,),
        (5,),
        {**MINI_MAML, "data.meta_batch_size": (4, FINN), "model.first_order": (True, FINN)},
    ),
    **family(
        "miniimagenet/fomaml",
        (5,),
        (5,),
        {**MINI_MAML, "data.meta_batch_size": (2, FINN), "model.first_order": (True, FINN)},
    ),
    **family("miniimagenet/reptile", (1,), (5,), {**MINI_REPTILE, "model.eval_inner_batch_size": (5, NICHOL)}),
    **family("miniimagenet/reptile", (5,), (5,), {**MINI_REPTILE, "model.eval_inner_batch_size": (15, NICHOL)}),
    **family("miniimagenet/protonet", (1,), (5,), {**MINI_PROTONET, "data.train_n_way": (30, SNELL + " (30-way)")}),
    **family("miniimagenet/protonet", (5,), (5,), {**MINI_PROTONET, "data.train_n_way": (20, SNELL + " (20-way)")}),
    **family(
        "miniimagenet/siamese",
        (1, 5),
        (5,),
        {"model.backbone.hidden": (32, OURS), "test_checkpoint": ("best", "Koch et al. 2015 (validation-chosen)")},
    ),
    **family("omniglot/baseline_nn", (1, 5), (5, 20), {**PRETRAINED, "trainer.max_epochs": (10, OURS_CPU)}),
    **family(
        "omniglot/baseline_finetune",
        (1, 5),
        (5, 20),
        {**PRETRAINED, **FINETUNE_GRID, "model.grid_episodes": (10, OURS_CPU), "trainer.max_epochs": (10, OURS_CPU)},
    ),
    **family("omniglot/maml", (1, 5), (5, 20), OMNIGLOT_MAML_5WAY, w20=OMNIGLOT_MAML_20WAY),
    **family(
        "omniglot/fomaml",
        (1, 5),
        (5, 20),
        {**OMNIGLOT_MAML_5WAY, "model.first_order": (True, FINN)},
        w20={**OMNIGLOT_MAML_20WAY, "model.first_order": (True, FINN)},
    ),
    **family("omniglot/reptile", (1, 5), (5, 20), OMNIGLOT_REPTILE_5WAY, w20=OMNIGLOT_REPTILE_20WAY),
    **family("omniglot/protonet", (1, 5), (5, 20), OMNIGLOT_PROTONET),
    **family("omniglot/matchingnet", (1, 5), (5, 20), {**OMNIGLOT_MATCHING, "model.optimizer.lr": (0.001, OURS)}),
    **family(
        "omniglot/matchingnet_fce",
        (1, 5),
        (5, 20),
        {
            **OMNIGLOT_MATCHING,
            "model.optimizer.lr": (0.0001, RAVI_MATCHING),
            "model.fce_clip_norm": (0.25, RAVI_MATCHING),
        },
    ),
    **family("omniglot/siamese", (1, 5), (5, 20), {"model.optimizer.lr": (0.001, OURS)}),
    **{
        f"omniglot/meta_lstm_{n_way}w{n_shot}s": {
            **shape(n_way, n_shot, OURS),
            # 20-way: 5 queries per class in training only, so the test episodes are the column's
            **({"data.train_n_query": (5, OURS)} if n_way == 20 else {}),
            **OMNIGLOT_META_LSTM,
            "model.n_steps": (12 if n_shot == 1 else 8, RAVI_1SHOT if n_shot == 1 else RAVI_5SHOT),
            "model.learner.bn_momentum": (0.9 if n_shot == 1 else 0.95, RAVI_1SHOT if n_shot == 1 else RAVI_5SHOT),
        }
        for n_way in (5, 20)
        for n_shot in (1, 5)
    },
}

CONF = PROJECT_ROOT / "conf" / "experiment"
PAPER_PRESETS = sorted(
    str(p.relative_to(CONF).with_suffix("")) for d in ("miniimagenet", "omniglot") for p in (CONF / d).glob("*.yaml")
)


@pytest.mark.parametrize("preset", sorted(PINNED))
def test_preset_runs_its_sources_values(preset: str, tmp_path: Path):
    cfg = compose_config([f"experiment={preset}"], tmp_path)
    drifted = [
        f"{key} = {OmegaConf.select(cfg, key)!r}, expected {expected!r} ({source})"
        for key, (expected, source) in PINNED[preset].items()
        if OmegaConf.to_object(OmegaConf.create({"v": OmegaConf.select(cfg, key)}))["v"] != expected
    ]
    assert not drifted, f"{preset} drifted from its source:\n" + "\n".join(drifted)


def test_every_paper_preset_is_pinned():
    unpinned = [p for p in PAPER_PRESETS if p not in PINNED]
    assert not unpinned, f"presets without pinned values (add them to PINNED with their sources): {unpinned}"


# what decides a preset's test episodes and the images in them (training-only keys left out)
TEST_EPISODE_KEYS = ("n_way", "n_shot", "n_query", "test_episodes", "eval_seed")
IMAGE_KEYS = ("mean", "std", "image_size", "channels")


@pytest.mark.parametrize("dataset", ["omniglot", "miniimagenet"])
def test_every_preset_of_one_setting_is_tested_on_the_same_episodes(dataset: str, tmp_path: Path):
    """A table column pairs its methods episode by episode, so every preset of one dataset, N and
    K must draw the same test episodes from the same data (issue 18: the same 600 per column)."""
    columns: dict[tuple[int, int], dict[str, list[str]]] = {}
    for preset in (p for p in PAPER_PRESETS if p.startswith(f"{dataset}/")):
        data = OmegaConf.to_container(compose_config([f"experiment={preset}"], tmp_path).data, resolve=True)
        test_keys = (*TEST_EPISODE_KEYS, *IMAGE_KEYS, "source")
        test_data = json.dumps({k: data[k] for k in test_keys}, sort_keys=True)
        columns.setdefault((data["n_way"], data["n_shot"]), {}).setdefault(test_data, []).append(preset)
    split = {f"{n}-way {k}-shot": list(groups.values()) for (n, k), groups in columns.items() if len(groups) > 1}
    assert not split, f"presets of one column test on different episodes or data: {split}"
