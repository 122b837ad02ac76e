"""`python -m fewshot.predict`: adapt a trained method on a support folder, label a query folder."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from fewshot.data.episode import Episode
from fewshot.predict import main as predict_main
from fewshot.predict import predict_folders
from fewshot.run.training import train
from tests.conftest import PROJECT_ROOT
from tests.helpers import omniglot_root, requires_omniglot

# every method config (pretrained is only the shared base of the two pre-trained baselines)
EXTRA = {"siamese_koch": ["data.image_size=72"]}  # Koch's network needs at least 65x65 images
METHODS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "model").glob("*.yaml") if p.stem != "pretrained")


def write_png(image: torch.Tensor, path: Path) -> None:
    """Save a uint8 ``[1, H, W]`` image as a grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[0].numpy()).save(path)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method_name", METHODS)
def test_predict_labels_query_folder_like_the_method_scores_the_same_images(method_name, tiny_config, tmp_path):
    cfg = tiny_config(f"model={method_name}", *EXTRA.get(method_name, []))
    results = train(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    classes = datamodule.splits["test"]  # held-out classes, as a user's new classes
    names = classes.names[:5]
    support, query = [], []
    for c, name in enumerate(names):
        images = classes.images[c]
        write_png(images[0], tmp_path / "support" / name / "a.png")
        support.append(images[0])
        for q in (1, 2):
            write_png(images[q], tmp_path / "query" / f"{name}_{q}.png")
            query.append(images[q])

    out = tmp_path / "predictions.csv"
    code = predict_main(
        [
            f"ckpt_path={results['checkpoint']}",
            f"support={tmp_path / 'support'}",
            f"query={tmp_path / 'query'}",
            f"output={out}",
        ]
    )
    assert code == 0
    rows = read_csv(out)
    assert [r["file"] for r in rows] == sorted(f"{n}_{q}.png" for n in names for q in (1, 2))
    assert all(r["prediction"] in names and 0.0 < float(r["confidence"]) <= 1.0 for r in rows)

    # the same images as an episode built from the loader's tensors give the same labels
    import fewshot

    method = fewshot.load(results["checkpoint"])
    order = sorted(range(10), key=lambda i: f"{names[i // 2]}_{i % 2 + 1}.png")
    episode = Episode(
        datamodule.normalize(torch.stack(support))[None],
        torch.arange(5)[None],
        datamodule.normalize(torch.stack([query[i] for i in order]))[None],
        torch.zeros(1, 10, dtype=torch.long),
        5,
        torch.tensor([0]),
    )
    with torch.enable_grad():
        expected = method(episode).detach()[0].argmax(-1)
    assert [r["prediction"] for r in rows] == [names[int(k)] for k in expected]


@requires_omniglot
def test_predict_on_real_omniglot_characters_from_other_drawers(tiny_config, tmp_path):
    cfg = tiny_config("data=omniglot", "data.train_episodes=200", "data.n_query=5", "trainer.max_epochs=2")
    results = train(cfg)
    archive = zipfile.ZipFile(omniglot_root() / "images_background_small1.zip")  # holds Korean, a test alphabet
    members = sorted(m for m in archive.namelist() if m.endswith(".png") and "/Korean/" in m)
    characters = sorted({m.split("/")[-2] for m in members})[:5]
    for character in characters:
        files = [m for m in members if f"/{character}/" in m]
        (tmp_path / "support" / character).mkdir(parents=True)
        (tmp_path / "support" / character / "shot.png").write_bytes(archive.read(files[0]))  # drawer 1
        for m in files[1:6]:  # five other drawers
            (tmp_path / "query").mkdir(exist_ok=True)
            (tmp_path / "query" / f"{character}_{Path(m).name}").write_bytes(archive.read(m))
    predictions = predict_folders(results["checkpoint"], tmp_path / "support", tmp_path / "query")
    assert len(predictions) == 25
    correct = np.mean([p.label == p.file.split("_")[0] for p in predictions])
    assert correct >= 0.6, f"accuracy {correct:.2f} on 5-way 1-shot Korean characters (chance 0.2)"


def test_predict_reports_missing_arguments_and_folders(tmp_path, capsys):
    with pytest.raises(SystemExit, match="missing ckpt_path=..., query=..., support=..."):
        predict_main([])
    with pytest.raises(SystemExit, match="usage: python -m fewshot.predict"):
        predict_main(["ckpt=x", "support=a", "query=b"])  # unknown key
    assert predict_main([f"ckpt_path={tmp_path / 'no.ckpt'}", "support=a", "query=b"]) == 2
    assert "not found" in capsys.readouterr().err


def test_predict_never_writes_over_one_of_its_inputs(tiny_config, tmp_path, capsys):
    """Issue 37, item 5: ``output=`` an input (the checkpoint, any image, by any path to it) is refused, untouched."""
    ckpt = Path(train(tiny_config())["checkpoint"])
    g = torch.Generator().manual_seed(0)
    for image in ("support/a/0.png", "support/a/1.png", "support/a/2.png", "support/b/0.png", "support/b/1.png"):
        write_png(torch.randint(0, 256, (1, 28, 28), generator=g, dtype=torch.uint8), tmp_path / image)
    query = tmp_path / "query" / "sub" / "q.png"
    write_png(torch.randint(0, 256, (1, 28, 28), generator=g, dtype=torch.uint8), query)
    (tmp_path / "hard.png").hardlink_to(query)
    (tmp_path / "soft.png").symlink_to(query)
    cases = {  # output given -> the input it is
        ckpt.parent / ".." / "checkpoints" / ckpt.name: ckpt,  # another spelling of its path
        query: query,
        tmp_path / "support" / "b" / "1.png": tmp_path / "support" / "b" / "1.png",
        tmp_path / "support" / "a" / "2.png": tmp_path / "support" / "a" / "2.png",  # past K=2: read, not used
        tmp_path / "hard.png": query,  # one file under two names
        tmp_path / "soft.png": query,
    }
    args = [f"ckpt_path={ckpt}", f"support={tmp_path / 'support'}", f"query={tmp_path / 'query'}"]
    for given, target in cases.items():
        before = target.read_bytes()
        assert predict_main([*args, f"output={given}"]) == 2, given
        err = capsys.readouterr().err
        assert err.startswith(f"error: Cannot write {given}: it is ") and err.count("\n") == 1, err
        assert "an input of this command, which would be replaced; pass another output=<file>" in err
        assert target.read_bytes() == before
    assert predict_main([*args, f"output={tmp_path / 'predictions.csv'}"]) == 0  # a path of its own is fine
    assert len(read_csv(tmp_path / "predictions.csv")) == 1


def test_predict_refuses_a_support_folder_with_one_class(tiny_config, tmp_path, capsys):
    results = train(tiny_config())
    write_png(torch.zeros(1, 28, 28, dtype=torch.uint8), tmp_path / "support" / "only" / "a.png")
    write_png(torch.zeros(1, 28, 28, dtype=torch.uint8), tmp_path / "query" / "q.png")
    assert (
        predict_main(
            [f"ckpt_path={results['checkpoint']}", f"support={tmp_path / 'support'}", f"query={tmp_path / 'query'}"]
        )
        == 2
    )
    assert "at least 2" in capsys.readouterr().err


@pytest.fixture(scope="module")
def query_folders(tmp_path_factory):
    """Support (5 classes, 1 shot) and 23 query PNGs of the tiny test classes."""
    from tests.conftest import compose_config

    root = tmp_path_factory.mktemp("folders")
    cfg = compose_config(["debug=tiny", "trainer=cpu", "logger=none"], root / "unused")
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    classes = datamodule.splits["test"]
    for c, name in enumerate(classes.names[:5]):
        write_png(classes.images[c][0], root / "support" / name / "a.png")
        for q in range(1, 6):
            if c * 5 + q <= 23:
                write_png(classes.images[c][q], root / "query" / f"{name}_{q}.png")
    return root / "support", root / "query"


@pytest.fixture
def forward_spy(monkeypatch):
    """Records, for every forward call of predict, its number of queries and whether its output keeps a graph."""
    import fewshot.predict as predict_module

    sizes, grad_modes = [], []
    real = predict_module.adapt_and_predict

    def spy(method, episode):
        sizes.append(episode.query_images.shape[1])
        probabilities = real(method, episode)
        grad_modes.append(probabilities.requires_grad)
        return probabilities

    monkeypatch.setattr(predict_module, "adapt_and_predict", spy)
    return sizes, grad_modes


@pytest.mark.parametrize("method_name", ["protonet", "reptile", "meta_lstm", "matchingnet_fce"])
def test_predictions_are_the_same_in_batches_and_each_forward_scores_at_most_a_batch(
    method_name, tiny_config, query_folders, forward_spy
):
    results = train(tiny_config(f"model={method_name}"))
    support, query = query_folders
    sizes, grad_modes = forward_spy
    whole = predict_folders(results["checkpoint"], support, query, batch_size=1000)
    assert sizes == [23]
    sizes.clear()
    batched = predict_folders(results["checkpoint"], support, query, batch_size=4)
    assert sizes == [4] * 5 + [3]  # every forward call holds at most batch_size queries
    assert [p.label for p in batched] == [p.label for p in whole]
    assert [p.confidence for p in batched] == pytest.approx([p.confidence for p in whole], abs=1e-5)
    assert not any(grad_modes)


def test_predict_scores_an_evaluation_episode_of_queries_per_call_by_default(tiny_config, query_folders, monkeypatch):
    results = train(tiny_config("data.n_query=2"))  # 5-way: 10 queries per evaluation episode
    import fewshot.predict as predict_module

    sizes = []
    real = predict_module.adapt_and_predict
    monkeypatch.setattr(
        predict_module, "adapt_and_predict", lambda m, e: sizes.append(e.query_images.shape[1]) or real(m, e)
    )
    assert len(predict_folders(results["checkpoint"], *query_folders)) == 23
    assert sizes == [10, 10, 3]


def test_predict_keeps_no_graph_of_the_queries(tiny_config, query_folders, monkeypatch):
    """Memory of one call does not grow with the queries it holds beyond their images: under no_grad
    no activation of the query batch is kept for a backward."""
    results = train(tiny_config("model=maml"))
    import tracemalloc

    peaks = {}
    for size in (5, 23):
        tracemalloc.start()
        predict_folders(results["checkpoint"], *query_folders, batch_size=size)
        peaks[size] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[23] < 2 * peaks[5], peaks


def test_query_and_class_names_that_are_not_utf8_are_one_line_naming_them(tmp_path):
    from fewshot.data.errors import DataError
    from fewshot.predict import query_files, support_files

    query = tmp_path / "query"
    query.mkdir()
    write_png(torch.zeros(1, 8, 8, dtype=torch.uint8), query / "fine.png")
    (query / "caf\udce9.png").write_bytes((query / "fine.png").read_bytes())  # b"caf\xe9.png": Latin-1
    with pytest.raises(DataError, match=r"The query file name caf\\xe9.png is not valid UTF-8.*rename it"):
        query_files(query)
    for name in ("a", "caf\udce9"):
        write_png(torch.zeros(1, 8, 8, dtype=torch.uint8), tmp_path / "support" / name / "s.png")
    with pytest.raises(DataError, match=r"support class folder name caf\\xe9 is not valid UTF-8"):
        support_files(tmp_path / "support")


def test_baseline_finetune_predicts_the_same_in_batches_and_writes_every_query(
    tiny_config, query_folders, tmp_path, forward_spy
):
    """Issue 37, item 17 for the method that fine-tunes a copy of its network per call: each batch
    adapts to the whole support from the same start, so 23 queries in batches of 4 get the labels
    and confidences of one call over all of them, and the CSV holds every query."""
    # two pre-training steps, a fixed fine-tuning (no grid search); lr 0.5: the queries get more than one label
    fixed = ["model.grid=null", "model.inner_lr=0.5", "model.inner_lr_decay=0.0", "model.eval_inner_steps=3"]
    short = ["trainer.max_steps=2", "test_checkpoint=last", "data.test_episodes=1"]
    results = train(tiny_config("model=baseline_finetune", *short, *fixed))
    support, query = query_folders
    sizes, grad_modes = forward_spy
    whole = predict_folders(results["checkpoint"], support, query, batch_size=1000)
    assert sizes == [23]
    sizes.clear()
    out = tmp_path / "predictions.csv"
    args = [f"ckpt_path={results['checkpoint']}", f"support={support}", f"query={query}", f"output={out}"]
    assert predict_main([*args, "batch_size=4"]) == 0
    assert sizes == [4] * 5 + [3]
    rows = read_csv(out)
    assert [r["file"] for r in rows] == [p.file for p in whole] == sorted(p.name for p in query.iterdir())
    assert [r["prediction"] for r in rows] == [p.label for p in whole]
    assert [float(r["confidence"]) for r in rows] == pytest.approx([p.confidence for p in whole], abs=2e-6)
    assert len({p.label for p in whole}) > 1  # fine-tuned, not one class for everything
    assert not any(grad_modes)
