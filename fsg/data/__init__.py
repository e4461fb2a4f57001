"""Data: built-in small sets, 2-D toys, image folders and zips, paired images, degradations, and the
deterministic, resumable, sharded `BatchStream`.

    dataset = build_dataset(cfg.data, split="train")      # items: {"x", "label", "index"[, "cond"]}
    for batch in BatchStream(dataset, 128, rank=rank, world=world, seed=seed, start_step=step):
        ...
"""

from fsg.data.loader import BatchStream
from fsg.data.sources import TOY_NAMES, build_dataset, sample_toy

__all__ = ["BatchStream", "TOY_NAMES", "build_dataset", "sample_toy"]
