"""Row validation (spec §0.4): shared checks, and `normalize_row`, which asks the record kind's module
(alignkit/kinds/) for its rules. Every source becomes a list of plain dicts of one schema per kind (the kinds and
their shapes: the docstrings of alignkit/kinds/*.py). Extra fields (ground truth answers, ids) are kept, so checkers
can use them.
"""
from __future__ import annotations

from alignkit.errors import DataError

Text = str | list  # a string, or a list of {"role", "content"} messages


def is_messages(value) -> bool:
    return (isinstance(value, list) and len(value) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value))


def check_text(row: dict, field: str, where: str) -> Text:
    """The field as a non-empty string or a list of {role, content} messages; else a DataError naming it."""
    value = row.get(field)
    if value is None:
        raise DataError(f"{where}: missing field `{field}`")
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field `{field}` is empty")
        return value
    if is_messages(value):
        return value
    raise DataError(f"{where}: field `{field}` must be a string or a list of {{role, content}} messages, "
                    f"got {type(value).__name__}")


def normalize_row(row: dict, kind: str, where: str) -> dict:
    """Validate one row of `kind` and return it in canonical form; raise DataError naming `where` and the field.
    Each kind's rules live in its module (alignkit/kinds/<kind>.py)."""
    from alignkit.kinds import get_kind

    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    return get_kind(kind).normalize(row, where)


def is_pair_row(row) -> bool:
    return isinstance(row, dict) and "chosen" in row and "rejected" in row and "label" not in row
