"""Data sources: `builtin:<name>`, local JSONL/JSON/Parquet files, and Hugging Face hub datasets by name
(`owner/name`, or `owner/name:config` to name the config per source; else data.hub_config). This module reads raw
rows; `alignkit.kinds.load_records` validates them as records of a kind (a bad row fails with its file, row index
and field, or is skipped and counted)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from alignkit.data.builtin import BUILTIN_DATASETS, BUILTIN_SPLITS
from alignkit.errors import DataError

log = logging.getLogger(__name__)


def read_raw(spec: str, split: str, seed: int, hub_config: str | None) -> tuple[list, str]:
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN_DATASETS:
            raise DataError(f"unknown built-in dataset `{spec}`; available: "
                            + ", ".join(f"builtin:{n}" for n in BUILTIN_DATASETS))
        generate = BUILTIN_DATASETS[name][0]
        try:
            return generate(split, seed=seed), f"{spec} (split {split}, seed {seed})"
        except KeyError:
            raise DataError(f"built-in dataset `{spec}` has no split `{split}` (it has "
                            f"{', '.join(BUILTIN_SPLITS[name])})") from None
    path = Path(spec).expanduser()
    if path.suffix in (".jsonl", ".json", ".parquet") or path.exists():
        if not path.exists():
            raise DataError(f"data file {path} does not exist")
        if path.suffix == ".jsonl":
            rows = []
            with open(path) as handle:
                for lineno, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        rows.append(DataError(f"{path} line {lineno}: invalid JSON ({exc.msg})"))
            return rows, str(path)
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
            if isinstance(data, dict) and isinstance(data.get(split), list):
                return data[split], f"{path} [{split}]"
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a list of rows (or {{\"{split}\": [...]}})")
            return data, str(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist(), str(path)
            except Exception as exc:
                raise DataError(f"{path}: cannot read Parquet ({exc})") from None
        raise DataError(f"{path}: unsupported file type (use .jsonl, .json or .parquet)")
    import datasets

    if ":" in spec:  # `owner/name:config` names the hub config per source (TOFU keeps each split in a config)
        spec, hub_config = spec.split(":", 1)
    try:
        dataset = datasets.load_dataset(spec, hub_config, split=split)
    except Exception as exc:
        raise DataError(f"cannot load hub dataset `{spec}` (split {split}): {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return dataset.to_list(), f"hub:{spec} (split {split})"


def read_rows(spec: str, split: str, seed: int = 0, hub_config: str | None = None) -> tuple[list[dict], str]:
    """Raw rows of a source (no record kind) and a description of where they came from; unreadable lines fail."""
    raw, origin = read_raw(spec, split, seed, hub_config)
    for row in raw:
        if isinstance(row, DataError):
            raise row
    if not raw:
        raise DataError(f"{origin}: no rows")
    return raw, origin


def is_hub_source(spec: str) -> bool:
    return not spec.startswith("builtin:") and not (Path(spec).expanduser().suffix in (".jsonl", ".json", ".parquet")
                                                     or Path(spec).expanduser().exists())


def behaviour_scorer(spec: str | None):
    """The behavioural checker of a built-in dataset (or None): `(row, completion) -> {metric: value}`."""
    if spec and spec.startswith("builtin:"):
        entry = BUILTIN_DATASETS.get(spec.removeprefix("builtin:"))
        return entry[2] if entry else None
    return None
