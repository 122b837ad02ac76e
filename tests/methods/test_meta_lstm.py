"""Meta-LSTM as a LightningModule: smoke, gate logging and plotting, checkpoints, errors."""

import csv
import json
from pathlib import Path

import pytest
import torch

import fewshot
from fewshot.reporting.build import main as report_main
from fewshot.run.training import train
from tests.conftest import compose_config

META_LSTM = ["model=meta_lstm", "model.inner_steps=3", "model.learner.hidden=8"]
LAYERS = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4", "head"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny Meta-LSTM run with the CSV logger, shared by this module: (results, folder)."""
    out = tmp_path_factory.mktemp("meta_lstm_run")
    cfg = compose_config(["debug=tiny", "trainer=cpu", "logger=csv", *META_LSTM], out)
    return train(cfg), out


def test_meta_lstm_trains_and_tests_through_train_py(trained):
    results, out = trained
    assert results["method"] == "Meta-LSTM"
    assert results["test"]["episodes"] == 6
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["model"]["_target_"] == "fewshot.methods.meta_lstm.MetaLSTM"


def test_gate_values_are_logged_per_step_and_layer_with_means_in_unit_interval(trained):
    results, out = trained
    with open(out / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys()
    for gate in ("input", "forget"):
        for layer in LAYERS:
            for step in (1, 2, 3):
                for prefix in ("gates", "test/gates"):
                    key = f"{prefix}/{gate}/{layer}/step{step}"
                    assert key in columns, key
                    values = [float(r[key]) for r in rows if r.get(key)]
                    assert values and all(0.0 <= v <= 1.0 for v in values), key
                assert f"gates/{gate}_std/{layer}/step{step}" in columns
    gates = results["test"]["gates"]
    assert gates["layers"] == LAYERS and gates["steps"] == 3 and gates["episodes"] == 6
    forget = torch.tensor(gates["forget"]["mean"])
    assert forget.shape == (3, 9) and bool((forget > 0.9).all())  # b_F ~ U(4, 5): forget gate near 1


def test_gate_figure_is_written_by_training_and_by_the_report_command(trained, capsys):
    _, out = trained
    assert (out / "gates.png").stat().st_size > 10_000
    (out / "gates.png").unlink()
    assert report_main([str(out)]) == 0
    assert (out / "gates.png").stat().st_size > 10_000 and (out / "gates.pdf").stat().st_size > 1_000
    assert "wrote" in capsys.readouterr().out


def test_report_on_a_folder_without_runs_fails_clearly(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_loaded_checkpoint_reproduces_test_predictions(trained):
    results, _ = trained
    method = fewshot.load(results["checkpoint"])
    assert type(method).__name__ == "MetaLSTM"
    torch.manual_seed(0)
    support = torch.rand(1, 5, 1, 28, 28)
    query = torch.rand(1, 10, 1, 28, 28)
    from fewshot.data.episode import Episode

    episode = Episode(
        support, torch.arange(5)[None], query, torch.arange(5).repeat_interleave(2)[None], 5, torch.tensor([0])
    )
    with torch.no_grad():
        first, second = method(episode), method(episode)
    assert first.shape == (1, 10, 5) and torch.equal(first, second)  # per-episode BN state is reset


def test_c0_is_meta_trained_by_the_optimiser(tiny_config):
    from hydra.utils import instantiate

    cfg = tiny_config(*META_LSTM)
    method = instantiate(cfg.model)
    c0 = method.metalearner.c0
    assert c0.numel() == sum(p.numel() for p in instantiate(cfg.model.learner).parameters())
    optimizer = method.configure_optimizers()
    assert any(p is c0 for group in optimizer.param_groups for p in group["params"])
    from fewshot.data.episode import Episode

    episode = Episode(
        torch.rand(1, 5, 1, 28, 28),
        torch.arange(5)[None],
        torch.rand(1, 10, 1, 28, 28),
        torch.arange(5).repeat_interleave(2)[None],
        5,
        torch.tensor([0]),
    )
    before = c0.detach().clone()
    method.episode_loss(episode)[0].backward()
    optimizer.step()
    assert c0.grad is not None and c0.grad.abs().sum() > 0
    assert not torch.equal(before, c0.detach())


def test_training_with_a_different_train_n_way_is_refused(tiny_config):
    with pytest.raises(ValueError, match=r"data.train_n_way=3-way. Set data.train_n_way=null"):
        train(tiny_config(*META_LSTM, "data.train_n_way=3"))


@pytest.mark.parametrize("eval_bn", ["transductive", "support"])
def test_both_query_batch_norm_modes_run(tiny_config, eval_bn):
    results = train(tiny_config(*META_LSTM, f"model.eval_bn={eval_bn}", "trainer.max_epochs=1"))
    assert 0.0 <= results["test"]["acc"] <= 1.0


def test_report_draws_nothing_for_runs_without_gates(tiny_config, tmp_path, capsys):
    train(tiny_config())
    assert report_main([str(tmp_path)]) == 0
    assert "no Meta-LSTM gate statistics" in capsys.readouterr().out
    assert not Path(tmp_path / "gates.png").exists()


def update_norm_of_one_huge_step(tiny_config, clip: str, trainer_clip: float | None = None) -> float:
    """Norm of the parameter update of one SGD step (lr 1) on a loss scaled by 1e6, through Lightning."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    cfg = tiny_config(*META_LSTM, "model.optimizer._target_=torch.optim.SGD", "model.optimizer.lr=1.0",
                      f"model.grad_clip_norm={clip}")  # fmt: skip
    method, datamodule = instantiate(cfg.model), instantiate(cfg.data)
    episode_loss = method.episode_loss
    method.episode_loss = lambda episode: (lambda loss, logits: (loss * 1e6, logits))(*episode_loss(episode))
    before = [p.detach().clone() for p in method.parameters()]
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", limit_val_batches=0, gradient_clip_val=trainer_clip, **quiet)
    trainer.fit(method, datamodule=datamodule)
    return float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(method.parameters(), before))))


def test_the_gradient_norm_clip_bounds_a_training_step_with_huge_gradients(tiny_config):
    assert update_norm_of_one_huge_step(tiny_config, "0.25") == pytest.approx(0.25, rel=1e-4)
    assert update_norm_of_one_huge_step(tiny_config, "null") > 1e3  # the same step unclipped
    # with the method's clip off, the Trainer's applies
    assert update_norm_of_one_huge_step(tiny_config, "null", trainer_clip=0.5) == pytest.approx(0.5, rel=1e-4)
