"""CONTRIBUTING.md's "Adding a method" example is a config that composes and builds."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from fewshot.methods.protonet import ProtoNet
from fewshot.models.conv4 import Conv4
from tests.conftest import CONFIG_DIR, PROJECT_ROOT


def example_model_config() -> str:
    """The YAML block under "**The config**" in CONTRIBUTING.md, unindented."""
    text = (PROJECT_ROOT / "CONTRIBUTING.md").read_text()
    section = text[text.index("**The config**") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return "\n".join(line.removeprefix("   ") for line in block.splitlines()) + "\n"


def test_the_example_method_config_composes_with_its_backbone_and_builds(tmp_path: Path):
    conf = shutil.copytree(CONFIG_DIR, tmp_path / "conf")
    example = example_model_config()
    assert "_target_: fewshot.methods.mymethod.MyMethod" in example
    # the example's class does not exist; the smallest real method takes its place
    (conf / "model" / "mymethod.yaml").write_text(
        example.replace("fewshot.methods.mymethod.MyMethod", "fewshot.methods.protonet.ProtoNet")
    )
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=mymethod"])
    assert cfg.model.backbone._target_ == "fewshot.models.conv4.Conv4"
    method = instantiate(cfg.model)
    assert isinstance(method, ProtoNet) and isinstance(method.backbone, Conv4)
