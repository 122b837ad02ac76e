"""Rewrite the preset snapshots (tests/training/preset_snapshots/) from the presets as they are now.

    python -m tests.training.update_preset_snapshot            # every preset
    python -m tests.training.update_preset_snapshot --check    # only list what differs (exit 1 if anything)
    python -m tests.training.update_preset_snapshot --show omniglot/maml_5w1s   # its values and their sources

Run it after changing a preset or a default on purpose, and review the printed changes (each with
the source of its key) and the snapshot diff before committing them. Snapshots of presets that no
longer exist are removed.
"""

from __future__ import annotations

import argparse
import sys

from tests.training.preset_guard import (
    SNAPSHOT_DIR,
    changes,
    current_values,
    preset_names,
    read_snapshot,
    show,
    snapshot_path,
    source_of,
    write_snapshot,
)


def main(argv: list[str] | None = None) -> int:
    """Print every change against the snapshots and (unless --check) rewrite them; 1 if --check found changes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="list the changes, write nothing")
    parser.add_argument(
        "--show", metavar="PRESET", help="print PRESET's guarded values with their sources, write nothing"
    )
    args = parser.parse_args(argv)
    if args.show:
        for key, value in sorted(current_values(args.show).items()):
            print(f"{key}: {show(value)}    [{source_of(args.show, key) or 'NO SOURCE'}]")
        return 0
    presets = preset_names()
    found = 0
    for preset in presets:
        values = current_values(preset)
        for change in changes(preset, read_snapshot(preset) or {}, values):
            found += 1
            print(f"{change}    [source: {source_of(preset, change.key) or 'NO SOURCE: add a rule'}]")
        if not args.check:
            write_snapshot(preset, values)
    stale = [p for p in SNAPSHOT_DIR.rglob("*.yaml") if p not in {snapshot_path(n) for n in presets}]
    for path in stale:
        found += 1
        print(f"{path.relative_to(SNAPSHOT_DIR)}: no such preset" + ("" if args.check else ", removed"))
        if not args.check:
            path.unlink()
    print(f"{found} change(s) in {len(presets)} presets" + ("" if args.check else "; snapshots written"))
    return 1 if args.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
