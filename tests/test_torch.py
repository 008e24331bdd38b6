"""PyTorch datasets with real DataLoader workers and a real two-rank gloo process group."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from spacefs import Dataset, RandomAccessDataSource
from spacefs.engine.errors import UserInputError
from spacefs.torch_data import TorchIterableDataset, TorchMapDataset

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")

N = 403  # not a multiple of ranks, workers or batches
SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])


def blob(i: int) -> bytes:
    return i.to_bytes(4, "little") * (1 + i % 50)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Dataset:
    ds = Dataset.create(str(tmp_path_factory.mktemp("torch") / "ds"), SCHEMA, ["id"], ["blob"])
    for part in np.array_split(np.arange(N), 3):  # three index files
        ids = part.tolist()
        ds.local().append({"id": ids, "label": [f"l{i}" for i in ids], "blob": [blob(i) for i in ids]})
    ds.add_tag("v1")
    ds.local().append({"id": [N], "label": ["late"], "blob": [b"late"]})
    return ds


def ids_of(loader) -> list[int]:
    return [int(i) for batch in loader for i in batch["id"]]


def test_map_dataset_dataloader_workers(ds):
    data = TorchMapDataset(ds, fields=["id", "label", "blob"], version="v1")
    assert len(data) == N
    assert data[5] == {"id": 5, "label": "l5", "blob": blob(5)}
    loader = DataLoader(data, batch_size=16, shuffle=True, num_workers=3,
                        generator=torch.Generator().manual_seed(0))
    seen = []
    for batch in loader:
        assert isinstance(batch["id"], torch.Tensor)  # default collate of index fields
        for i, label, b in zip(batch["id"].tolist(), batch["label"], batch["blob"], strict=True):
            assert label == f"l{i}" and b == blob(i)
            seen.append(i)
    assert sorted(seen) == list(range(N))


def test_map_dataset_defaults_and_transform(ds):
    data = TorchMapDataset(ds.location, transform=lambda r: len(r["blob"]))
    assert len(data) == N + 1  # head of main, all fields
    loader = DataLoader(data, batch_size=50, num_workers=2)
    sizes = torch.cat(list(loader)).tolist()
    assert sizes[:N] == [len(blob(i)) for i in range(N)] and sizes[N] == 4
    src = RandomAccessDataSource({"blob": ds})
    assert TorchMapDataset(src)[3] == {"blob": blob(3)}
    with pytest.raises(UserInputError):
        TorchMapDataset(src, version="v1")


def run_ranks(ds, world: int, **kw) -> list[list[int]]:
    out = []
    for rank in range(world):
        data = TorchIterableDataset(ds, fields=["id"], version="v1", rank=rank, world_size=world, **kw)
        out.append(ids_of(DataLoader(data, batch_size=7, num_workers=3)))
    return out


def test_iterable_shards_workers_and_ranks(ds):
    ranks = run_ranks(ds, 3, shuffle=True, seed=11)
    per_rank = -(-N // 3)
    assert all(len(r) == per_rank for r in ranks)  # equal, padded by wrapping around
    flat = [i for r in ranks for i in r]
    assert set(flat) == set(range(N)) and len(flat) - len(set(flat)) == per_rank * 3 - N
    assert run_ranks(ds, 3, shuffle=True, seed=11) == ranks  # deterministic
    assert run_ranks(ds, 3, shuffle=True, seed=12) != ranks
    dropped = run_ranks(ds, 3, shuffle=True, seed=11, drop_last=True)
    flat = [i for r in dropped for i in r]
    assert len(flat) == len(set(flat)) == (N // 3) * 3


def test_iterable_order_epochs_and_single_process(ds):
    plain = TorchIterableDataset(ds, fields=["id", "blob"], version="v1", read_size=10)
    rows = list(plain)
    assert [r["id"] for r in rows] == list(range(N)) and rows[9]["blob"] == blob(9)
    shuffled = TorchIterableDataset(ds, fields=["id"], version="v1", shuffle=True, seed=1)
    # One process: all rows, the global shuffle order whatever the worker count.
    e0 = [r["id"] for r in shuffled]
    assert sorted(e0) == list(range(N)) and e0 != list(range(N))
    assert sorted(ids_of(DataLoader(shuffled, batch_size=8, num_workers=2))) == list(range(N))
    shuffled.set_epoch(1)
    e1 = [r["id"] for r in shuffled]
    assert sorted(e1) == list(range(N)) and e1 != e0
    with pytest.raises(UserInputError):
        TorchIterableDataset(ds, rank=1)
    with pytest.raises(UserInputError):
        TorchIterableDataset(ds, rank=2, world_size=2)


RANK_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from spacefs.torch_data import TorchIterableDataset

    location, init, rank, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    data = TorchIterableDataset(location, fields=["id"], version="v1", shuffle=True, seed=11)
    ids = [int(i) for b in DataLoader(data, batch_size=7, num_workers=2) for i in b["id"]]
    dist.barrier()
    dist.destroy_process_group()
    json.dump(ids, open(out, "w"))
""")


def test_iterable_under_torch_distributed(ds, tmp_path):
    init = f"file://{tmp_path / 'pg'}"
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, ds.location, init, str(r),
                               str(tmp_path / f"rank{r}.json")]) for r in range(2)]
    for p in procs:
        assert p.wait(timeout=240) == 0
    got = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    # Each rank read exactly the slice that rank/world_size arguments name.
    assert [sorted(r) for r in got] == [sorted(r) for r in run_ranks(ds, 2, shuffle=True, seed=11)]
    assert set(got[0]) | set(got[1]) == set(range(N)) and len(got[0]) == len(got[1])
