"""Logging a comparison report (table and figures) to Weights & Biases, offline by default."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path


def log_report_to_wandb(
    table_csv: str,
    figures: Sequence[Path],
    save_dir: Path,
    project: str = "fewshot",
    group: str | None = None,
    offline: bool = True,
) -> Path:
    """Log the comparison table and figures as one W&B run (``job_type=report``); return its folder.

    Offline runs need no account; upload them later with ``wandb sync <folder>``.
    """
    import wandb  # imported here: reports without W&B never pay for it

    rows = list(csv.reader(io.StringIO(table_csv)))
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        group=group,
        job_type="report",
        dir=str(save_dir),
        mode="offline" if offline else "online",
        reinit="finish_previous",
    )
    try:
        run.log({"comparison": wandb.Table(columns=rows[0], data=rows[1:])})
        run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in figures})
        for row in rows[1:]:
            record = dict(zip(rows[0], row))
            run.summary[f"{record['setting']}/{record['method']}/acc"] = float(record["acc"])
        return Path(run.dir).parent
    finally:
        run.finish()
