"""Command line: ``python -m fewshot.data.prepare {miniimagenet,cifar_fs,fc100} ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fewshot.data.errors import DataError
from fewshot.data.prepare.cifar import prepare_cifar
from fewshot.data.prepare.miniimagenet import prepare_miniimagenet
from fewshot.data.prepare.output import Prepared

# what to train with afterwards: the data= option and the variable that points it at the folder
DATA_OPTIONS = {
    "miniimagenet": ("miniimagenet", "FEWSHOT_MINIIMAGENET_ROOT"),
    "cifar_fs": ("cifar_fs", "FEWSHOT_CIFAR_FS_ROOT"),
    "fc100": ("fc100", "FEWSHOT_FC100_ROOT"),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser with one subcommand per dataset."""
    parser = argparse.ArgumentParser(
        prog="python -m fewshot.data.prepare",
        description="Build a few-shot benchmark from data you own, in the layout its data= config reads.",
    )
    commands = parser.add_subparsers(dest="dataset", required=True, metavar="{miniimagenet,cifar_fs,fc100}")
    mini = commands.add_parser(
        "miniimagenet", help="Mini-ImageNet (Ravi & Larochelle split) from the ILSVRC-2012 training folder"
    )
    mini.add_argument("--imagenet", type=Path, required=True, help="ILSVRC-2012 train folder: <synset>/*.JPEG")
    mini.add_argument(
        "--csv-dir", type=Path, default=None, help="folder with train.csv, val.csv, test.csv (default: .)"
    )
    for name, paper in (("cifar_fs", "CIFAR-FS (Bertinetto et al. 2019)"), ("fc100", "FC100 (Oreshkin et al. 2018)")):
        cifar = commands.add_parser(name, help=f"{paper} from the CIFAR-100 python archive")
        cifar.add_argument(
            "--cifar100", type=Path, required=True, help="cifar-100-python.tar.gz or the folder it extracts to"
        )
    for command in commands.choices.values():
        command.add_argument("--out", type=Path, required=True, help="folder to create (built in <out>.partial)")
        command.add_argument("--workers", type=int, default=None, help="threads (default: min(8, cpu count))")
        command.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run(args: argparse.Namespace) -> Prepared:
    """Build the dataset ``args`` name."""
    progress = not args.no_progress
    if args.dataset == "miniimagenet":
        return prepare_miniimagenet(args.imagenet, args.out, args.csv_dir, args.workers, progress)
    return prepare_cifar(args.dataset, args.cifar100, args.out, args.workers, progress)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume (finished images are kept)", file=sys.stderr)
        return 130
    option, variable = DATA_OPTIONS[result.dataset]
    print(result.summary())
    print(f"train on it: python train.py data={option} data.source.root={result.out.resolve()}")
    print(f"  (or export {variable}={result.out.resolve()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
