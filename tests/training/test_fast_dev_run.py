"""``debug=fast_dev_run`` runs one training step and one test episode of every selectable method."""

import json
from pathlib import Path

import pytest

from fewshot.run.training import train
from tests.conftest import PROJECT_ROOT, compose_config

# pretrained is only the shared base of the two pre-trained baselines and refuses to be built
MODELS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "model").glob("*.yaml") if p.stem != "pretrained")
EXTRA = {"siamese_koch": ["data.image_size=72"]}  # Koch's network needs at least 65x65 images, embedded is 28x28


@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_trains_one_step_and_tests_one_episode(model, tmp_path: Path):
    cfg = compose_config(["debug=fast_dev_run", "trainer=cpu", f"model={model}", *EXTRA.get(model, [])], tmp_path)
    assert cfg.data.source._target_ == "fewshot.data.embedded.EmbeddedGlyphs"
    results = train(cfg)
    assert results["train"]["steps"] == 1
    assert results["test"]["episodes"] == 1 and len(results["test"]["episode_acc"]) == 1
    assert json.loads((tmp_path / "results.json").read_text())["test"]["episodes"] == 1


def test_fast_dev_run_covers_every_selectable_model():
    assert {"protonet", "meta_lstm", "maml", "baseline_finetune", "siamese_koch"} <= set(MODELS)
    assert "pretrained" not in MODELS
