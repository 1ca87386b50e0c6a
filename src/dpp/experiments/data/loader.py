"""A fast, deterministic, shardable batch iterator over an in-memory dataset.

Slicing batches out of one big tensor is far faster than
:class:`torch.utils.data.DataLoader` with per-sample collation, especially on a machine with
few CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from ..seeding import mix_seed
from .datasets import TensorDataset

__all__ = ["AugmentFn", "BatchLoader"]

AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class BatchLoader:
    """Fast, deterministic, shardable batch iterator over an in-memory :class:`TensorDataset`.

    One pass (``for images, labels in loader``) is one epoch. The order of epoch ``e`` is
    ``torch.randperm(N, generator=torch.Generator().manual_seed(seed + e))`` — the same
    scheme as :class:`torch.utils.data.DistributedSampler` — so resuming needs no state:
    call :meth:`set_epoch` with the epoch to resume (and ``start_batch`` to resume
    mid-epoch). Every rank draws the same permutation and takes every
    ``world_size``-th index starting at ``rank``; without ``drop_last`` the permutation is
    padded by wrapping around so all ranks get the same number of batches (a few samples
    then appear twice per epoch), with ``drop_last`` it is truncated instead and
    incomplete batches are dropped.

    Augmentation, if given, is called as ``augment(images, generator)`` on each batch with
    a fresh generator seeded from ``(seed, epoch, rank, batch index)``, so it is
    reproducible and independent of where iteration was resumed.

    Args:
        dataset: the data; ``images [N, C, H, W]`` and ``labels [N]``.
        batch_size: samples per batch (per rank).
        shuffle: draw a new permutation each epoch; otherwise use ``0..N-1``.
        seed: base seed for the permutation and the augmentation.
        generator: optional stateful alternative to ``seed``: when given, each epoch's
            permutation and augmentation seed are drawn from it (``seed`` and the epoch
            are then ignored; save/restore its state for exact resume).
        drop_last: truncate the index list to a multiple of ``world_size`` and drop the
            last incomplete batch.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes sharing the epoch.
        augment: optional ``(images [B,C,H,W], generator) -> images`` transform, e.g.
            :class:`RandomCropFlip`.
        device: if given, the dataset is moved there once (fast for small datasets on GPU).

    Yields:
        ``(images [B, C, H, W] float32, labels [B] int64)`` with ``B <= batch_size``;
        batches are fresh tensors (not views of the dataset).

    Example::

        >>> ds = TensorDataset(torch.zeros(10, 1, 2, 2), torch.arange(10), "toy", "train")
        >>> loader = BatchLoader(ds, 4, shuffle=True, seed=0)
        >>> loader.set_epoch(3)
        >>> [len(y) for _, y in loader]
        [4, 4, 2]
    """

    def __init__(
        self,
        dataset: TensorDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        augment: AugmentFn | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank=}, {world_size=}")
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        self.dataset = dataset
        self.images = dataset.images if device is None else dataset.images.to(device)
        self.labels = dataset.labels if device is None else dataset.labels.to(device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.generator = generator
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.augment = augment
        self.epoch = 0
        self.start_batch = 0

    @property
    def num_samples(self) -> int:
        """Samples per rank per epoch (including wrap-around padding)."""
        n = len(self.dataset)
        if self.drop_last:
            return n // self.world_size
        return math.ceil(n / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch (per rank)."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch the next iteration yields, optionally skipping its first batches.

        Args:
            epoch: epoch number (sets the permutation, as in ``DistributedSampler``).
            start_batch: index of the first batch to yield (for mid-epoch resume). It only
                applies to the next iteration.
        """
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def _epoch_plan(self, epoch: int) -> tuple[torch.Tensor, int]:
        """Return (this rank's sample indices for ``epoch``, augmentation base seed)."""
        n = len(self.dataset)
        if self.generator is not None:
            g = self.generator
            order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
            aug_seed = int(torch.randint(0, 2**62, (1,), generator=g)) if self.augment else 0
        else:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + epoch)
                order = torch.randperm(n, generator=g)
            else:
                order = torch.arange(n)
            aug_seed = mix_seed(self.seed, epoch)
        total = self.num_samples * self.world_size
        if total > n:  # pad by wrapping around (possibly several times for tiny datasets)
            order = order.repeat(math.ceil(total / n))
        order = order[:total]
        return order[self.rank : total : self.world_size], aug_seed

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's sample indices for ``epoch`` (default: the current one), in order.

        With a ``generator`` this consumes randomness from it.
        """
        return self._epoch_plan(self.epoch if epoch is None else epoch)[0]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start = self.epoch, self.start_batch
        self.start_batch = 0
        order, aug_seed = self._epoch_plan(epoch)
        order = order.to(self.images.device)
        bs = self.batch_size
        for b in range(start, len(self)):
            idx = order[b * bs : (b + 1) * bs]
            images = self.images.index_select(0, idx)
            labels = self.labels.index_select(0, idx)
            if self.augment is not None:
                g = torch.Generator().manual_seed(mix_seed(aug_seed, self.rank, b))
                images = self.augment(images, g)
            yield images, labels
