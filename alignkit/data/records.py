"""Row validation helpers (spec §0.4) shared by the record kinds' modules (alignkit/kinds/), which hold each kind's
rules. Every source becomes a list of plain dicts of one schema per kind (the kinds and
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


def is_pair_row(row) -> bool:
    return isinstance(row, dict) and "chosen" in row and "rejected" in row and "label" not in row
