"""The wheel: what ``pip install .`` (not editable) ships, and that it runs from a fresh location.

The wheel is built from the tracked files of the checkout (as a clean clone has them) and
installed with ``pip install --target`` into a folder of its own; the checks then run in a
subprocess whose ``PYTHONPATH`` puts that folder first and whose working directory is outside
the checkout, so nothing is imported from the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra.utils import instantiate
from PIL import Image

from fewshot.run.training import train
from tests.conftest import PROJECT_ROOT

# files the package needs at run time besides its Python modules
RUNTIME_DATA = (
    "fewshot/nn/native/lstm_ops.cpp",
    "fewshot/conf/train.yaml",
    "fewshot/conf/model/meta_lstm.yaml",
    "fewshot/conf/experiment/omniglot/meta_lstm_5w1s.yaml",
    "fewshot/conf/hydra/launcher/slurm.yaml",
)


def tracked_checkout(into: Path) -> Path:
    """A copy of the checkout's tracked files (what a clean clone holds)."""
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.skip("building the wheel from the tracked files needs git and a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout.split(
        b"\0"
    )
    for name in filter(None, (f.decode() for f in files)):
        source = PROJECT_ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of the checkout, built without network access (no build isolation)."""
    source = tracked_checkout(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (found,) = out.glob("fewshot-*.whl")
    return found


@pytest.fixture(scope="module")
def installed_wheel(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the wheel is installed into (``pip install --target``, no dependencies), once for the module."""
    target = tmp_path_factory.mktemp("installed")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return target


def test_wheel_ships_the_package_its_native_source_and_no_tests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    entry_points = ("fewshot/reporting/__main__.py",)  # python -m fewshot.reporting
    for needed in (*RUNTIME_DATA, "fewshot/__init__.py", "fewshot/nn/native.py", *entry_points):
        assert needed in names, f"{needed} is missing from {wheel.name}"
    assert not [n for n in names if n.startswith(("tests/", "conf/", "benchmarks/"))]
    top = {n.split("/")[0] for n in names}
    assert top == {"fewshot", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    shipped = {n.removeprefix("fewshot/") for n in names if n.startswith("fewshot/conf/")}
    in_checkout = {
        str(p.relative_to(PROJECT_ROOT / "fewshot")) for p in (PROJECT_ROOT / "fewshot" / "conf").rglob("*.yaml")
    }
    assert shipped == in_checkout  # every config, and only one copy of each
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "fewshot-train = fewshot.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_checkouts_conf_is_the_packages_config_root():
    conf = PROJECT_ROOT / "conf"
    assert conf.is_symlink() and conf.resolve() == (PROJECT_ROOT / "fewshot" / "conf").resolve()
    tracked = subprocess.run(["git", "ls-files", "-s", "conf"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout:
        assert tracked.stdout.startswith("120000 ")  # git stores it as a link, not a copy of the files


def test_python_m_fewshot_training_is_the_training_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    shown = subprocess.run(
        [sys.executable, "-m", "fewshot.run.training", "--cfg", "job", "model=maml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "_target_: fewshot.methods.maml.MAML" in shown.stdout


INSTALLED_CHECKS = """
import runpy
import sys
from pathlib import Path
import torch
import fewshot
from fewshot.nn import native

target, ckpt, support, query, predictions, run_dir, report = sys.argv[1:]
assert Path(fewshot.__file__).resolve().is_relative_to(Path(target).resolve()), fewshot.__file__
assert native.SOURCE.is_file(), native.SOURCE
assert native.load() is not None, "the native kernels did not build from the installed source"
assert native.applies(torch.zeros(2)), "the Meta-LSTM would not take its native path"
print("loaded", type(fewshot.load(ckpt)).__name__)


def run_module(name, *args):
    # what `python -m name args` does, in this process (one interpreter start for all checks)
    sys.argv = [name, *args]
    try:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        assert stop.code in (0, None), f"python -m {name} exited with {stop.code}"


run_module("fewshot.predict", f"ckpt_path={ckpt}", f"support={support}", f"query={query}", f"output={predictions}")
run_module("fewshot.reporting", run_dir, "--out", report)
"""


def write_pngs(images, folder: Path, stem: str) -> None:
    """Save uint8 ``[1, H, W]`` images as grayscale PNGs ``<stem><i>.png`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(folder / f"{stem}{i}.png")


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler")
def test_installed_wheel_runs_the_native_path_load_predict_and_report(installed_wheel, tiny_config, tmp_path):
    results = train(tiny_config("model=meta_lstm"))
    cfg = tiny_config()
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    classes = datamodule.splits["test"]
    for c, name in enumerate(classes.names[:5]):
        write_pngs(classes.images[c][:1], tmp_path / "support" / name, "s")
        write_pngs(classes.images[c][1:3], tmp_path / "query", f"{name}_")
    target = installed_wheel
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(target),
        "FEWSHOT_KERNEL_CACHE": str(tmp_path / "kernels"),
        "FEWSHOT_PROJECT_ROOT": str(elsewhere),
    }

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            INSTALLED_CHECKS,
            str(target),
            results["checkpoint"],
            str(tmp_path / "support"),
            str(tmp_path / "query"),
            str(tmp_path / "predictions.csv"),
            str(Path(results["checkpoint"]).parents[1]),
            str(tmp_path / "report"),
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"{done.stdout[-2000:]}{done.stderr[-3000:]}"
    assert "loaded MetaLSTM" in done.stdout
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 1 + 10
    assert "Meta-LSTM" in (tmp_path / "report" / "table.md").read_text()


def test_installed_wheel_trains_tests_and_reports_from_any_folder_with_the_console_script(installed_wheel, tmp_path):
    target = installed_wheel
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "FEWSHOT_PROJECT_ROOT"}  # as a user's shell has it
    env |= {"PYTHONPATH": str(target), "FEWSHOT_KERNEL_CACHE": str(tmp_path / "kernels"), "WANDB_MODE": "offline"}
    overrides = ["debug=tiny", "trainer=cpu", "logger=none", "trainer.enable_progress_bar=false"]
    trained = subprocess.run(
        [str(target / "bin" / "fewshot-train"), *overrides], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    (results,) = (elsewhere / "logs" / "train" / "runs").glob("*/results.json")  # run folders under the cwd
    assert "test" in results.read_text()
    report = subprocess.run(
        [sys.executable, "-m", "fewshot.reporting", str(results.parent), "--out", str(tmp_path / "report")],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert "ProtoNet" in (tmp_path / "report" / "table.md").read_text()
