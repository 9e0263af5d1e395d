"""Aspect-ratio-grouped, distributed-aware, resumable stream of training batches.

Each epoch's batch list is a pure function of (seed, epoch, rank), so a resumed
run skips the batches it already consumed without loading their images.
"""

from __future__ import annotations

import bisect
from typing import Iterator

import torch
from torch.utils.data import DataLoader

from kdtrain.data.coco import collate


def aspect_ratio_bins(ratios: list[float], group_factor: int) -> list[int]:
    """Quantise width/height ratios into 2*group_factor+2 bins (torchvision's scheme)."""
    if group_factor < 0:
        return [0] * len(ratios)
    edges = (2 ** torch.linspace(-1, 1, 2 * group_factor + 1)).tolist() if group_factor > 0 else [1.0]
    return [bisect.bisect_right(edges, r) for r in ratios]


def epoch_indices(n: int, seed: int, epoch: int, rank: int, world_size: int) -> list[int]:
    """Shuffled indices of this rank for one epoch (same split as DistributedSampler)."""
    sampler = torch.utils.data.DistributedSampler(
        range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
    )
    sampler.set_epoch(epoch)
    return list(sampler)


def grouped_batches(indices: list[int], groups: list[int], batch_size: int) -> list[list[int]]:
    """Batches whose images share an aspect-ratio group; leftovers batched together at the end."""
    buffers: dict[int, list[int]] = {}
    batches = []
    for idx in indices:
        buf = buffers.setdefault(groups[idx], [])
        buf.append(idx)
        if len(buf) == batch_size:
            batches.append(buf)
            buffers[groups[idx]] = []
    leftovers = [i for buf in buffers.values() for i in buf]
    for start in range(0, len(leftovers), batch_size):
        batches.append(leftovers[start:start + batch_size])
    return batches


class TrainBatchStream:
    """Endless iterator of collated batches, starting at a given global iteration."""

    def __init__(self, dataset, batch_size: int, seed: int, workers: int = 0, group_factor: int = 3,
                 rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.workers = workers
        self.rank = rank
        self.world_size = world_size
        ratios = [dataset.aspect_ratio(i) for i in range(len(dataset))]
        self.groups = aspect_ratio_bins(ratios, group_factor)

    def batches_of_epoch(self, epoch: int) -> list[list[int]]:
        indices = epoch_indices(len(self.dataset), self.seed, epoch, self.rank, self.world_size)
        return grouped_batches(indices, self.groups, self.batch_size)

    def iterate(self, start_iteration: int = 0) -> Iterator[tuple]:
        epoch, skip = 0, start_iteration
        while True:
            batches = self.batches_of_epoch(epoch)
            if skip >= len(batches):
                skip -= len(batches)
                epoch += 1
                continue
            # Augmentation randomness derives from (seed, epoch, index), not from
            # global RNG state, so a resumed run sees the same flips.
            self.dataset.augment_seed = self.seed * 1000003 + epoch
            # Its own generator: without one, starting the loader draws its worker seed from the global
            # RNG, so a resumed run (which starts it mid-epoch) would train on a different random stream.
            loader = DataLoader(
                self.dataset,
                batch_sampler=batches[skip:],
                collate_fn=collate,
                num_workers=self.workers,
                generator=torch.Generator().manual_seed((self.seed * 1000003 + epoch) * 1009 + self.rank),
            )
            skip = 0
            for images, targets in loader:
                yield epoch, images, targets
            epoch += 1
