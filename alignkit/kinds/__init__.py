"""Record kinds: one module each (pairs, sft, unpaired, forget, reward_pairs, feedback). A kind owns how its rows are
normalised (validated into one canonical form), encoded into token ids, collated into batches, and which tensors
its objectives receive from the policy's (and reference's) forwards. Everything else asks the registry, or the
functions at the end of this module (load_records, encode_rows, kind_mismatch):

    kind = get_kind("pairs")
    row = kind.normalize(raw_row, "data.jsonl row 3"); example = kind.encode(tokenizer, row, settings)
    batch = kind.collate(examples, pad_id); tensors = kind.inputs(objective, model, batch, ctx, reference)

A new record kind is one new module here that calls `register_kind(...)`, plus objectives that declare it."""
from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

from alignkit.data.encode import EncodeSettings
from alignkit.data.sources import read_raw
from alignkit.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordKind:
    name: str
    normalize: Callable[[dict, str], dict]  # (raw row, where) -> canonical row; DataError naming `where` and field
    encode: Callable  # (tokenizer, row, EncodeSettings) -> example with token ids and "truncated"
    collate: Callable[[list[dict], int], dict]  # (examples, pad id) -> batch tensors
    inputs: Callable  # (objective, module, batch, ctx, reference, retain_batch, params) -> {name: tensor}
    sequences_per_example: int  # sequences an example becomes in a batch (what a reference table stores)
    shape: str  # the fields a row needs, for messages ("prompt + chosen + rejected")
    pipeline: str = "preference"  # the pipelines/ module that runs objectives of this kind
    # rows of another shape this kind also takes: (row, where) -> [raw rows of this kind], or None when the row is
    # not of that shape
    expand: Callable[[dict, str], list[dict] | None] | None = None
    reward_model: bool = False  # the trained model is a reward model (backbone + scalar head), not a policy
    special_tokens: tuple[str, ...] = ()  # tokens the model must have (added with mean-resized embeddings)
    doc: str = field(default="", compare=False)


_KINDS: dict[str, RecordKind] = {}
_loaded = False


def register_kind(kind: RecordKind) -> RecordKind:
    if kind.name in _KINDS:
        raise ValueError(f"record kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


def _load() -> None:
    """Import every module of this package once (their register_kind calls fill the registry)."""
    global _loaded
    if _loaded:
        return
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    _loaded = True


def get_kind(name: str) -> RecordKind:
    _load()
    if name not in _KINDS:
        raise DataError(f"unknown record kind {name!r}; kinds: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def all_kinds() -> list[RecordKind]:
    _load()
    return list(_KINDS.values())


# --------------------------------------------------------------------------------- records of a kind
def normalize_row(row: dict, kind: str, where: str) -> dict:
    """Validate one row of `kind` and return it in canonical form; raise DataError naming `where` and the field."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    return get_kind(kind).normalize(row, where)


@dataclass
class LoadedData:
    rows: list[dict]
    origin: str  # human-readable description of the source
    skipped: int = 0  # bad rows skipped under on_bad_row: skip


def load_records(spec: str, split: str, kind: str, *, on_bad_row: str = "error", limit: int | None = None,
                 seed: int = 0, hub_config: str | None = None, keep_labels: tuple[bool, ...] = (True, False)
                 ) -> LoadedData:
    """Validated records of `kind`. `limit` counts records kept; `keep_labels` drops unpaired records of a side."""
    record_kind = get_kind(kind)
    raw, origin = read_raw(spec, split, seed, hub_config)
    rows, skipped = [], 0
    for index, row in enumerate(raw):
        try:
            if isinstance(row, DataError):
                raise row
            where = f"{origin} row {index}"
            # rows of another shape the kind also takes (preference pairs for unpaired objectives)
            expanded = record_kind.expand(row, where) if record_kind.expand and isinstance(row, dict) else None
            records = [normalize_row(r, kind, where) for r in (expanded if expanded is not None else [row])]
            rows.extend(r for r in records if kind != "unpaired" or r["label"] in keep_labels)
        except DataError as exc:
            if on_bad_row == "error":
                raise DataError(f"{exc} (set data.on_bad_row: skip to skip bad rows)") from None
            skipped += 1
            if skipped <= 3:
                log.warning("skipping bad row: %s", exc)
        if limit is not None and len(rows) >= limit:
            rows = rows[:limit]
            break
    if skipped:
        log.warning("skipped %d bad row(s) of %s", skipped, origin)
    if not rows:
        raise DataError(f"{origin}: no usable rows" + (f" ({skipped} bad rows skipped)" if skipped else ""))
    return LoadedData(rows, origin, skipped)


def row_kinds(row) -> list[str]:
    """The record kinds a raw row is valid as (directly, or through a kind's `expand`)."""
    kinds = []
    for kind in all_kinds():
        try:
            kind.normalize(row, "row")
            kinds.append(kind.name)
        except DataError:
            try:
                if kind.expand is not None and kind.expand(row, "row") is not None:
                    kinds.append(kind.name)
            except DataError:
                pass
    return kinds


def kind_mismatch(spec: str, split: str, kind: str, *, seed: int = 0, hub_config: str | None = None,
                  sample: int = 5) -> tuple[str, list[str], str] | None:
    """None when the first `sample` rows of a source include a valid `kind` record (bad rows of the right kind get
    their own row-level message from load_records); else (origin, the kinds its first row is, its fields).
    A hub dataset is read whole: validation-only callers skip hub sources (is_hub_source)."""
    raw, origin = read_raw(spec, split, seed, hub_config)
    rows = [r for r in raw[:sample] if isinstance(r, dict)]
    if not rows or any(kind in row_kinds(r) for r in rows):
        return None
    return origin, row_kinds(rows[0]), ", ".join(list(rows[0])[:8])


def encode_rows(tokenizer, rows: list[dict], kind: str, s: EncodeSettings, origin: str = "") -> tuple[list, int]:
    """Encode every row with its kind's encoder (alignkit/kinds/); returns the examples and how many were truncated."""
    encode = get_kind(kind).encode
    encoded, truncated = [], 0
    for index, row in enumerate(rows):
        try:
            example = encode(tokenizer, row, s)
        except DataError as exc:
            raise DataError(f"{origin} row {index}: {exc}") from None
        example["index"] = index
        truncated += example.pop("truncated")
        encoded.append(example)
    return encoded, truncated


