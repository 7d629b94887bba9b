"""A training set encoded once into Arrow files (pipelines/data_cache.py) and read from them by position.

The driver and every Ray Train worker memory-map the same files: no process holds the whole encoded set in its heap,
and only the path travels through the Ray object store. A worker reads just the rows its micro-batches index (its
shard of the seeded stream, engine/sources.py), so sharding and exact resume are the same as for an in-memory list.
Each row is stored as one JSON string: record kinds encode examples with different, optional fields, and a column
of JSON keeps every kind (and every mix of field types) in one schema.
"""
from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path

from alignkit.errors import DataError


class EncodedRows(Sequence):
    """The encoded examples saved at `path` (a datasets `save_to_disk` folder with an `example` column), as a
    sequence of example dicts with `index` set to their position. `extra`: per-example fields added on read (the
    spurious-attribute bins a reward model's training set gets in the driver, data/spurious.py)."""

    def __init__(self, path: str | Path, extra: list[dict] | None = None):
        self.path = str(path)
        self.extra = extra
        self._data = None

    def _open(self):
        if self._data is None:
            if not Path(self.path).is_dir():
                raise DataError(
                    f"the encoded training data {self.path} is not on this machine ({socket.gethostname()}): on a "
                    "cluster of several nodes set data.cache_dir to a folder every node mounts (like run.storage_path)")
            import datasets

            self._data = datasets.load_from_disk(self.path)  # memory-mapped Arrow files
        return self._data

    def __len__(self) -> int:
        return len(self._open())

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        example = json.loads(self._open()[i]["example"])
        if self.extra is not None:
            example.update(self.extra[i])
        example["index"] = i
        return example

    def with_fields(self, fields: list[dict]) -> EncodedRows:
        return EncodedRows(self.path, fields)

    def __getstate__(self) -> dict:  # pickled (ray.put) as its path: the data stays in the files
        return {"path": self.path, "extra": self.extra}

    def __setstate__(self, state: dict) -> None:
        self.path, self.extra, self._data = state["path"], state["extra"], None

    def __repr__(self) -> str:
        return f"EncodedRows({self.path!r})"


def with_fields(encoded, fields: list[dict]):
    """`encoded` (a list of example dicts or EncodedRows) with `fields[i]` added to example i."""
    if isinstance(encoded, EncodedRows):
        return encoded.with_fields(fields)
    return [{**example, **extra} for example, extra in zip(encoded, fields)]
