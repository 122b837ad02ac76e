"""Episode sampling rate from the in-memory cache (5-way 1-shot 15-query by default).

    python -m benchmarks.sampling [--root ../shared/data/omniglot] [--episodes 2000]

Falls back to the embedded dataset when the Omniglot folder is absent.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks.common import time_call, write_json
from fewshot.data.datamodule import EpisodicDataModule
from fewshot.data.episode import collate_episodes
from fewshot.data.sampler import EpisodeSampler, EpisodeSpec


def build_source(root: Path | None):
    """Omniglot when its folder exists, else the embedded glyphs."""
    if root is not None and root.exists():
        from fewshot.data.omniglot import Omniglot

        return Omniglot(root=str(root))
    from fewshot.data.embedded import EmbeddedGlyphs

    return EmbeddedGlyphs()


def main() -> None:
    """Print load time and episodes/s of sampling, with and without float normalisation."""
    parser = argparse.ArgumentParser(description=__doc__)
    default_root = os.environ.get("FEWSHOT_OMNIGLOT_ROOT", "../shared/data/omniglot")
    parser.add_argument("--root", type=Path, default=Path(default_root))
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--n-shot", type=int, default=1)
    parser.add_argument("--n-query", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench_results/sampling.json"))
    args = parser.parse_args()

    source = build_source(args.root)
    start = time.perf_counter()
    splits = source.load()
    load_s = time.perf_counter() - start
    spec = EpisodeSpec(args.n_way, args.n_shot, args.n_query)
    sampler = EpisodeSampler(splits["train"], spec, seed=0, split="train")
    n = args.episodes

    raw = time_call(lambda: [sampler[i] for i in range(n)], repeats=3)
    channels, size, _ = splits["train"].image_shape
    dm = EpisodicDataModule(source, image_size=size, channels=channels)

    def sample_and_normalise() -> None:
        for i in range(0, n, 1):
            ep = collate_episodes([sampler[i]])
            dm.normalize(ep.support_images), dm.normalize(ep.query_images)

    full = time_call(sample_and_normalise, repeats=3)
    rows = {
        "dataset": source.name,
        "episode": f"{spec.n_way}-way {spec.n_shot}-shot {spec.n_query}-query",
        "load_s": round(load_s, 3),
        "sample_episodes_per_s": round(n / raw["median_s"], 1),
        "sample_collate_normalise_episodes_per_s": round(n / full["median_s"], 1),
        "timing": {"sample": raw, "sample_collate_normalise": full, "episodes_per_repeat": n},
    }
    print(f"dataset {rows['dataset']} ({rows['episode']}), decoded in {rows['load_s']} s")
    print(f"  sampling:                     {rows['sample_episodes_per_s']:>10.1f} episodes/s")
    print(f"  sampling + collate + to float: {rows['sample_collate_normalise_episodes_per_s']:>10.1f} episodes/s")
    print(f"  written to {write_json(args.out, rows)}")


if __name__ == "__main__":
    main()
