"""The spurious attribute `z` of each response in reward pairs, and its bins (spec §6.2).

`z` is a response's length in tokens (`data.spurious_attribute: length`, the default) or the record fields
`z_chosen` / `z_rejected` (`field`). Numbers with more distinct values than `data.spurious_bins` are cut into that
many quantile bins of the training set (chosen and rejected responses pooled); anything else (a flag, a category)
gets one bin per value. The bins are fitted once, on the training split, and applied to every split, in the driver.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alignkit.errors import DataError

ATTRIBUTES = ("length", "field")


@dataclass
class Binning:
    edges: list[float] = field(default_factory=list)  # inner quantile edges (numeric attributes)
    categories: list = field(default_factory=list)  # values, in bin order (categorical attributes)

    def index(self, value) -> int:
        if self.categories:
            # A value never seen in training gets a bin of its own.
            return self.categories.index(value) if value in self.categories else len(self.categories)
        return int(np.searchsorted(self.edges, float(value), side="right"))

    @property
    def num_bins(self) -> int:
        return len(self.categories) if self.categories else len(self.edges) + 1

    def describe(self) -> str:
        if self.categories:
            return f"{self.num_bins} categories {self.categories}"
        return f"{self.num_bins} quantile bins, edges {[round(e, 2) for e in self.edges]}"


def attribute_values(encoded, attribute: str, origin: str = "") -> list[tuple]:
    """(z_chosen, z_rejected) of every encoded pair (a list of examples or EncodedRows)."""
    if attribute == "length":
        return [(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in encoded]
    if attribute == "field":
        values = []
        for i, e in enumerate(encoded):
            if "z_chosen" not in e:
                raise DataError(f"{origin} row {i}: data.spurious_attribute is `field` but the row has no "
                                "`z_chosen` / `z_rejected`")
            values.append((e["z_chosen"], e["z_rejected"]))
        return values
    raise DataError(f"unknown data.spurious_attribute `{attribute}`; use one of {', '.join(ATTRIBUTES)}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fit_binning(values: list, num_bins: int) -> Binning:
    """Quantile bins for numbers with more than `num_bins` distinct values, else one bin per value."""
    distinct = sorted(set(values), key=repr)
    if all(_is_number(v) for v in values) and len(distinct) > num_bins:
        edges = np.quantile(np.asarray(values, dtype=np.float64), [i / num_bins for i in range(1, num_bins)])
        return Binning(edges=sorted(set(float(e) for e in edges)))
    if all(_is_number(v) for v in values):
        distinct = sorted(distinct)
    return Binning(categories=distinct)


def bin_fields(values: list[tuple], binning: Binning) -> list[dict]:
    """The fields each example gets: its z values and their bins (added with data/encoded_rows.with_fields)."""
    return [{"z_chosen": z_w, "z_rejected": z_l, "z_bin_chosen": binning.index(z_w),
             "z_bin_rejected": binning.index(z_l)} for z_w, z_l in values]


def assign_bins(encoded: list[dict], values: list[tuple], binning: Binning) -> None:
    for example, fields in zip(encoded, bin_fields(values, binning)):
        example.update(fields)
