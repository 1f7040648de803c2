"""Which samples iteration k draws, as a pure function of (seed, k, rank, world size).

Like mmseg's InfiniteSampler(shuffle=True), the sample stream is an endless run of per-epoch
permutations; iteration k of a global batch G = world x batch takes stream positions
[kG, (k+1)G) and rank r the r-th slice of that. Positions also seed each sample's augmentation,
so a run resumed at iteration k sees exactly the batches it would have seen, on any world size.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


def positions(iteration: int, batch: int, rank: int = 0, world: int = 1) -> range:
    start = (iteration * world + rank) * batch
    return range(start, start + batch)


def index_at(position: int, n: int, seed: int) -> int:
    epoch, offset = divmod(position, n)
    return _permutation(seed, epoch, n)[offset]


def sample_seed(position: int, seed: int) -> int:
    """Seed of one sample's augmentation draw (a 63-bit mix, so nearby positions decorrelate)."""
    return (seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9) % (1 << 63)
