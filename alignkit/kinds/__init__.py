"""Record kinds: one module each (pairs, sft, unpaired, forget, reward_pairs). A kind owns how its rows are
normalised (validated into one canonical form), encoded into token ids, collated into batches, and which tensors
its objectives receive from the policy's (and reference's) forwards. Everything else asks the registry:

    kind = get_kind("pairs")
    row = kind.normalize(raw_row, "data.jsonl row 3"); example = kind.encode(tokenizer, row, settings)
    batch = kind.collate(examples, pad_id); tensors = kind.inputs(objective, model, batch, ctx, reference)

A new record kind is one new module here that calls `register_kind(...)`, plus objectives that declare it."""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field


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
        from alignkit.errors import DataError

        raise DataError(f"unknown record kind {name!r}; kinds: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def all_kinds() -> list[RecordKind]:
    _load()
    return list(_KINDS.values())
