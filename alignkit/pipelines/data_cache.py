"""Encode a training set through `datasets` once, into the cache, and hand out the cached Arrow files.

`encode_source` validates (the record kind's normalize/expand), transforms (IDK answers) and encodes (the kind's
encoder) every row with `Dataset.map` over `data.num_proc` processes, and saves the examples under
`<data.cache_dir or $ALIGNKIT_CACHE/data>/<kind>-<key>/`. The key hashes everything the examples depend on: the
source (a file's path, size and mtime; a built-in set's name, split, seed and generator code; a hub dataset's
fingerprint), the tokenizer's files, the encoding settings, the limits and the encoder code itself — so a second run
with the same inputs skips the encoding, and any change re-encodes. Workers read their rows from these files
(data/encoded_rows.py) instead of one object-store copy of the whole set.

Rows keep the order of the source (a kind that expands one row into several keeps them in order), bad rows fail with
their row index (or are skipped and counted under data.on_bad_row: skip), and `limit` keeps the first N records:
the same records, in the same order, as `kinds.load_records` + `kinds.encode_rows` give.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from alignkit.data.encode import EncodeSettings
from alignkit.data.encoded_rows import EncodedRows
from alignkit.errors import DataError
from alignkit.paths import cache_dir, file_lock, files_fingerprint

log = logging.getLogger(__name__)

AUTO_NUM_PROC_ROWS = 20_000  # data.num_proc: null uses one process below this many source rows, else up to 8
RAW = "_alignkit_json"  # the column of a source's rows as JSON text (JSONL lines, built-in and .json rows)


def encode_source(tokenizer, tokenizer_dir: str, spec: str, split: str, kind: str, settings: EncodeSettings, *,
                  seed: int = 0, hub_config: str | None = None, on_bad_row: str = "error", limit: int | None = None,
                  keep_labels: tuple[bool, ...] = (True, False), transform=None, num_proc: int | None = None,
                  root: str | None = None) -> tuple[EncodedRows, dict]:
    """The encoded records of a source (EncodedRows over the cache) and stats: origin, rows, skipped, truncated,
    cache_hit, seconds, path. `transform(row, source_row_index) -> row` (picklable, its repr part of the key) runs
    on each validated record before encoding."""
    from alignkit.kinds import get_kind

    start = time.perf_counter()
    base = Path(root).expanduser() if root else cache_dir() / "data"
    source_key, origin = _source_key(spec, split, seed, hub_config)
    get_kind(kind)  # an unknown kind fails here
    # the encoder code: every record kind module (a kind may build on another's encoder), encode.py and this file
    kinds_dir = Path(inspect.getsourcefile(get_kind)).parent
    code = [_file_hash(str(f)) for f in sorted(kinds_dir.glob("*.py"))] + [
        _file_hash(inspect.getsourcefile(f)) for f in (EncodeSettings, encode_source)]
    key = hashlib.sha256(json.dumps([source_key, kind, list(keep_labels), on_bad_row, limit, asdict(settings),
                                     files_fingerprint(Path(tokenizer_dir)), repr(transform), code]).encode())
    target = base / f"{kind}-{key.hexdigest()[:16]}"
    with file_lock(base / "locks" / f"{target.name}.lock"):
        if not (target / "meta.json").exists():
            raw = _raw_dataset(spec, split, seed, hub_config, base)
            procs = num_proc or (min(os.cpu_count() or 1, 8) if len(raw) >= AUTO_NUM_PROC_ROWS else 1)
            log.info("encoding %s (%d rows, %d process(es)) into %s", origin, len(raw), procs, target)
            encode = _EncodeBatch(tokenizer, kind, settings, keep_labels, transform, origin, RAW in raw.column_names)
            data, stats = _encode_all(raw, encode, procs, limit, on_bad_row, origin, target.name)
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            data.save_to_disk(str(tmp / "data"))
            meta = {**stats, "origin": origin, "num_proc": procs, "encode_seconds": time.perf_counter() - start,
                    "created": time.strftime("%Y-%m-%d %H:%M:%S"), "spec": spec, "split": split}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
            os.replace(tmp, target)
            hit = False
        else:
            meta = json.loads((target / "meta.json").read_text())
            hit = True
            log.info("encoded data: cache hit %s (%d rows of %s, encoded in %.1f s on %s)", target, meta["rows"],
                     origin, meta["encode_seconds"], meta["created"])
    if meta["skipped"]:
        log.warning("skipped %d bad row(s) of %s", meta["skipped"], origin)
    rows = EncodedRows(target / "data")
    return rows, {"origin": origin, "rows": meta["rows"], "skipped": meta["skipped"], "truncated": meta["truncated"],
                  "cache_hit": hit, "seconds": time.perf_counter() - start, "path": str(target)}


class _EncodeBatch:
    """The map function: a batch of source rows (JSON text or hub columns) -> one output row per record (or per bad
    row: its error), with the source row's index. Never raises for a bad row: errors are collected in order."""

    def __init__(self, tokenizer, kind: str, settings, keep_labels, transform, origin: str, json_text: bool):
        self.tokenizer, self.kind, self.settings, self.keep_labels = tokenizer, kind, settings, keep_labels
        self.transform, self.origin, self.json_text = transform, origin, json_text
        self.offset = 0  # the source index of the chunk's first row

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        from alignkit.kinds import get_kind, normalize_row

        record_kind = get_kind(self.kind)
        columns = list(batch)
        out = {"example": [], "error": [], "source_row": [], "truncated": []}

        def emit(index, example=None, error=None, cut=False):
            out["example"].append(None if example is None else json.dumps(example))
            out["error"].append(error)
            out["source_row"].append(index)
            out["truncated"].append(cut)

        for position, index in enumerate(i + self.offset for i in indices):
            where = f"{self.origin} row {index}"
            if self.json_text:
                line = batch[RAW][position]
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    emit(index, error=f"{self.origin} line {index + 1}: invalid JSON ({exc.msg})")
                    continue
            else:
                row = {c: batch[c][position] for c in columns}
            try:
                if not isinstance(row, dict):
                    raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
                expanded = record_kind.expand(row, where) if record_kind.expand else None
                records = [normalize_row(r, self.kind, where) for r in (expanded if expanded is not None else [row])]
                records = [r for r in records if self.kind != "unpaired" or r["label"] in self.keep_labels]
                examples = []
                for record in records:
                    if self.transform is not None:
                        record = self.transform(record, index)
                    examples.append(record_kind.encode(self.tokenizer, record, self.settings))
            except DataError as exc:
                message = str(exc)
                emit(index, error=message if message.startswith(self.origin) else f"{where}: {message}")
                continue
            for example in examples:
                cut = bool(example.pop("truncated", False))
                emit(index, example, cut=cut)
        return out


def _encode_all(raw, encode: _EncodeBatch, num_proc: int, limit: int | None, on_bad_row: str, origin: str,
                key: str):
    """Map the source in growing chunks until `limit` records are kept (all of it without a limit); the first bad
    row fails (data.on_bad_row: error) or bad rows are dropped and counted (skip)."""
    import datasets

    parts, kept, skipped, truncated, start = [], 0, 0, 0, 0
    size = len(raw) if limit is None else min(len(raw), max(limit, 1000))
    while start < len(raw) and (limit is None or kept < limit):
        chunk = raw.select(range(start, min(len(raw), start + size)))
        encode.offset = start
        mapped = chunk.map(encode, batched=True, batch_size=500, with_indices=True, remove_columns=chunk.column_names,
                           num_proc=num_proc if len(chunk) >= 2 * num_proc else None, new_fingerprint=f"{key}-{start}",
                           load_from_cache_file=False, keep_in_memory=False, desc=f"encoding {origin}")
        start += size
        size *= 2
        if "error" not in mapped.column_names:  # only blank lines: no records
            continue
        errors, keep = mapped["error"], []
        for position, error in enumerate(errors):
            if limit is not None and kept >= limit:
                break
            if error is None:
                keep.append(position)
                kept += 1
                continue
            if on_bad_row == "error":
                raise DataError(f"{error} (set data.on_bad_row: skip to skip bad rows)")
            skipped += 1
            if skipped <= 3:
                log.warning("skipping bad row: %s", error)
        part = mapped.select(keep) if len(keep) < len(mapped) else mapped
        truncated += sum(part["truncated"])
        parts.append(part)
    if not kept:
        raise DataError(f"{origin}: no usable rows" + (f" ({skipped} bad rows skipped)" if skipped else ""))
    data = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    return data.select_columns(["example"]), {"rows": kept, "skipped": skipped, "truncated": truncated}


def _source_key(spec: str, split: str, seed: int, hub_config: str | None) -> tuple[list, str]:
    """What identifies a source's rows without reading them (a hub dataset is loaded: datasets caches it), and a
    description of it."""
    from alignkit.data.builtin import BUILTIN_DATASETS
    from alignkit.data.sources import is_hub_source

    if spec.startswith("builtin:"):
        entry = BUILTIN_DATASETS.get(spec.removeprefix("builtin:"))
        code = _file_hash(inspect.getsourcefile(entry[0])) if entry else ""
        return [spec, split, seed, code], f"{spec} (split {split}, seed {seed})"
    if not is_hub_source(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(f"data file {path} does not exist")
        stat = path.stat()
        origin = f"{path} [{split}]" if path.suffix == ".json" else str(path)
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns, split], origin
    name, config = spec.split(":", 1) if ":" in spec else (spec, hub_config)
    return [spec, split, config, _hub_dataset(name, config, split)._fingerprint], f"hub:{name} (split {split})"


def _raw_dataset(spec: str, split: str, seed: int, hub_config: str | None, base: Path):
    """The source as a datasets.Dataset: JSONL as its lines (parsed in the map processes, so a bad line is a bad row),
    Parquet and hub datasets as their columns, built-in sets and JSON files as rows of JSON text."""
    import datasets

    from alignkit.data.sources import is_hub_source, read_raw

    if not spec.startswith("builtin:") and not is_hub_source(spec):
        path = Path(spec).expanduser()
        if path.suffix == ".jsonl":
            lines = datasets.load_dataset("text", data_files=str(path), split="train", cache_dir=str(base / "hf"))
            return lines.rename_column("text", RAW)
        if path.suffix == ".parquet":
            try:
                return datasets.load_dataset("parquet", data_files=str(path), split="train",
                                             cache_dir=str(base / "hf"))
            except Exception as exc:
                raise DataError(f"{path}: cannot read Parquet ({exc})") from None
    if is_hub_source(spec):
        name, config = spec.split(":", 1) if ":" in spec else (spec, hub_config)
        return _hub_dataset(name, config, split)
    rows, _ = read_raw(spec, split, seed, hub_config)  # built-in sets and .json files: small, read in memory
    return datasets.Dataset.from_dict({RAW: [json.dumps(r) for r in rows]})


@functools.lru_cache(maxsize=4)  # the key and the rows come from one load
def _hub_dataset(name: str, config: str | None, split: str):
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        raise DataError(f"cannot load hub dataset `{name}` (split {split}): {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def _file_hash(path: str | None) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path else ""
