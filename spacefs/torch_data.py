"""PyTorch datasets over a version of a spacefs dataset (or materialized view).

Named ``torch_data`` so that it does not shadow the ``torch`` package. Both datasets read
through ``RandomAccessDataSource``: index fields come from memory, record fields from
ArrayRecord with sorted, merged ``pread`` calls, and nothing opened before a DataLoader
forks its workers is shared with them.

- ``TorchMapDataset``: map-style; ``DataLoader(..., shuffle=True, num_workers=N)`` calls
  its ``__getitems__`` once per batch.
- ``TorchIterableDataset``: streams rows, each DataLoader worker of each distributed rank
  taking its own deterministic slice of one (optionally shuffled) global order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Dataset as _MapStyle
from torch.utils.data import IterableDataset as _IterStyle
from torch.utils.data import get_worker_info

from spacefs.engine.errors import UserInputError
from spacefs.engine.storage import Version
from spacefs.random_access import RandomAccessDataSource, Source, _as_dataset

Transform = Callable[[dict[str, Any]], Any]


def _source(source: Source | RandomAccessDataSource, fields: Sequence[str] | None, version: Version,
            deserialize: bool) -> RandomAccessDataSource:
    if isinstance(source, RandomAccessDataSource):
        if fields is not None or version is not None:
            raise UserInputError("fields and version are fixed by the RandomAccessDataSource given")
        return source
    ds = _as_dataset(source, "dataset")
    names = list(ds.schema.names if fields is None else ([fields] if isinstance(fields, str) else fields))
    return RandomAccessDataSource({f: ds for f in names}, deserialize=deserialize, version=version)


def _rows(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


class TorchMapDataset(_MapStyle):
    """Rows of a version as dicts ``{field: value}``, by index.

    ``source`` is a dataset location, ``Dataset``, ``MaterializedView`` or a ready
    ``RandomAccessDataSource``; ``fields`` defaults to all fields (index and record);
    ``transform`` maps each row dict to what the DataLoader collates.

    Example::

        loader = DataLoader(TorchMapDataset("/data/ds", fields=["id", "image"]),
                            batch_size=64, shuffle=True, num_workers=4)
    """

    def __init__(self, source: Source | RandomAccessDataSource, fields: Sequence[str] | None = None,
                 version: Version = None, transform: Transform | None = None, deserialize: bool = False):
        self.source = _source(source, fields, version, deserialize)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        rows = _rows(self.source.columns(indices))
        return rows if self.transform is None else [self.transform(r) for r in rows]


class TorchIterableDataset(_IterStyle):
    """Streams the rows of a version, sharded across DataLoader workers and ranks.

    The global order is the index order, or with ``shuffle=True`` a permutation drawn
    from ``seed + epoch`` (call ``set_epoch`` between epochs). It is cut into
    ``world_size`` contiguous equal parts, one per rank (the last rows wrap around to fill
    the last part unless ``drop_last``), and each rank's part into one contiguous slice per
    DataLoader worker. Every rank sees the same number of rows, and the union over ranks
    and workers is the whole dataset. ``rank``/``world_size`` default to
    ``torch.distributed`` when it is initialized, else to a single process.
    """

    def __init__(self, source: Source | RandomAccessDataSource, fields: Sequence[str] | None = None,
                 version: Version = None, *, shuffle: bool = False, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, drop_last: bool = False, read_size: int = 256,
                 transform: Transform | None = None, deserialize: bool = False):
        self.source = _source(source, fields, version, deserialize)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.drop_last = drop_last
        self.read_size = max(1, int(read_size))
        self.transform = transform
        if (rank is None) != (world_size is None):
            raise UserInputError("give both rank and world_size, or neither")
        if world_size is not None and (world_size < 1 or not 0 <= rank < world_size):
            raise UserInputError(f"rank {rank} is not within world_size {world_size}")
        self._rank, self._world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Draw a new shuffle order (the same on every rank for the same epoch)."""
        self.epoch = int(epoch)

    def _topology(self) -> tuple[int, int]:
        if self._world_size is not None:
            return self._rank, self._world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def rank_indices(self) -> np.ndarray:
        """The row indices this rank reads in this epoch, in order."""
        rank, world = self._topology()
        n = len(self.source)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        per_rank = n // world if self.drop_last else -(-n // world)
        if per_rank * world > n:
            order = np.resize(order, per_rank * world)  # wrap around, as DistributedSampler pads
        return order[rank * per_rank : (rank + 1) * per_rank]

    def worker_indices(self) -> np.ndarray:
        """The row indices of the calling DataLoader worker (all of the rank's outside one)."""
        mine = self.rank_indices()
        info = get_worker_info()
        if info is None:
            return mine
        return np.array_split(mine, info.num_workers)[info.id]

    def __len__(self) -> int:
        return len(self.rank_indices())

    def __iter__(self) -> Iterator[Any]:
        idx = self.worker_indices()
        for start in range(0, len(idx), self.read_size):
            rows = _rows(self.source.columns(idx[start : start + self.read_size]))
            if self.transform is not None:
                rows = [self.transform(r) for r in rows]
            yield from rows


__all__ = ["TorchIterableDataset", "TorchMapDataset"]
