"""Train and test a few-shot method from a checkout: `python train.py [overrides]` (see README).

The same command is ``fewshot-train`` once the package is installed (fewshot/cli.py); the configs
live in ``fewshot/conf`` (``conf`` at the top of the checkout links to it).
"""

import os
from pathlib import Path

# logs/ and the shared data folder beside this checkout, from whatever folder this is run
os.environ.setdefault("FEWSHOT_PROJECT_ROOT", str(Path(__file__).resolve().parent))

from fewshot.cli import main  # noqa: E402 - after the project root is known

if __name__ == "__main__":
    main()
