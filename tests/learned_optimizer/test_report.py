"""Learning-rate tuning, the comparison on shared draws, the final-loss table, curves and figure."""

import csv
import math
from functools import partial
from pathlib import Path

import torch

from fewshot.learned_optimizer.baselines import SGD, Adam
from fewshot.learned_optimizer.comparison import Baselines, Comparison, OptimizerResult, Tuning, tune_learning_rate
from fewshot.learned_optimizer.plots import save_curves_figure
from fewshot.learned_optimizer.quadratic import Quadratics
from fewshot.learned_optimizer.report import curve_stats, final_row, markdown_table, write_curves_csv


def test_tuning_picks_the_lowest_final_loss_and_scores_divergence_as_infinite():
    draws = Quadratics(dim=5).sample(4, seed=0)
    tuning = tune_learning_rate(SGD, draws, steps=30, grid=[1e-4, 1e-2, 10.0])
    assert tuning.lr == 1e-2 and not tuning.at_grid_edge
    assert tuning.scores[10.0] == math.inf
    assert tuning.scores[1e-2] < tuning.scores[1e-4]


def test_comparison_runs_every_optimizer_on_the_same_draws():
    problem = Quadratics(dim=4, steps=5)
    baselines = Baselines(rules={"SGD": partial(SGD), "Adam": partial(Adam)}, lr_grid=[1e-3, 1e-1])
    results = Comparison(n_draws=6, n_tuning_draws=3, steps=5, seed=1).run(problem, {"fixed": SGD(lr=0.05)}, baselines)
    assert [r.name for r in results] == ["fixed", "SGD", "Adam"]
    assert all(r.losses.shape == (6, 6) for r in results)
    first = results[0].losses[0]
    assert all(torch.equal(r.losses[0], first) for r in results)  # same starting points
    assert results[0].tuning is None and results[1].tuning.lr in (1e-3, 1e-1)


def example_results() -> list[OptimizerResult]:
    losses = torch.tensor([[4.0, 8.0, 6.0, 2.0], [1.0, 3.0, 2.0, 4.0]])  # [steps + 1, B]
    return [
        OptimizerResult("LSTM", losses),
        OptimizerResult("SGD", losses * 2, Tuning(lr=0.01, scores={0.01: 5.0, 0.1: math.inf})),
    ]


def test_final_row_and_markdown_table():
    rows = [final_row(r) for r in example_results()]
    assert rows[0]["final_loss"]["mean"] == 2.5 and rows[0]["final_loss"]["median"] == 2.5
    assert rows[0]["lr"] is None and rows[1]["lr"] == 0.01 and rows[1]["lr_scores"] == {"0.01": 5.0, "0.1": math.inf}
    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| optimizer | learning rate | final loss")
    assert table[2] == "| LSTM | learned | 2.5 ± 1.3 | 2.5 [1.75, 3.25] |"
    assert table[3].startswith("| SGD | 0.01 (grid edge) | 5 ± 2.6 |")


def test_curves_csv_and_figure(tmp_path: Path):
    results = example_results()
    stats = curve_stats(results[0].losses)
    torch.testing.assert_close(stats["mean"], torch.tensor([5.0, 2.5]))
    path = write_curves_csv(results, tmp_path / "curves.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 4 and rows[1] == {
        "optimizer": "LSTM",
        "step": "1",
        "mean": "2.5",
        "std": "1.29099",
        "q25": "1.75",
        "median": "2.5",
        "q75": "3.25",
    }
    png, pdf = save_curves_figure(results, tmp_path, title="example")
    assert png.stat().st_size > 1000 and pdf.is_file()
