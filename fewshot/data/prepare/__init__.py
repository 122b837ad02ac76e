"""Build benchmarks from data you own: Mini-ImageNet from ImageNet, CIFAR-FS and FC100 from CIFAR-100.

Run ``python -m fewshot.data.prepare --help``. Each command writes a folder that one of the
``data=`` configs reads, building it in ``<out>.partial`` (resumable) and renaming it to
``<out>`` only when every image is written and counted.
"""

from fewshot.data.prepare.cifar import prepare_cifar
from fewshot.data.prepare.miniimagenet import prepare_miniimagenet
from fewshot.data.prepare.output import Prepared

__all__ = ["Prepared", "prepare_cifar", "prepare_miniimagenet"]
