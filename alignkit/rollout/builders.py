"""Row builders: how an online round's scored completions become training rows of an objective's record kind.
Each is one function registered by name with the kind it produces; `online.rows` in a recipe names one (auto: the
one registered first for the objective's kind), `online.rows_params` are its keyword arguments.

    rows = make_row_builder("best_vs_worst", {"min_gap": 0.5}, kind="pairs")(prompt_rows, completions, feedback)
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

from alignkit.errors import RecipeError
from alignkit.rollout.feedback import Feedback
from alignkit.rollout.types import Completion

RowBuilder = Callable[[list[dict], list[Completion], list[Feedback]], list[dict]]
ROW_BUILDERS: dict[str, tuple[str, Callable]] = {}  # name -> (record kind, function)


def row_builder(name: str, kind: str):
    def wrap(fn):
        ROW_BUILDERS[name] = (kind, fn)
        return fn
    return wrap


def _as_completion(row: dict, text: str):
    return [{"role": "assistant", "content": text}] if isinstance(row["prompt"], list) else text


@row_builder("rejection_sampling", kind="sft")
def rejection_sampling(rows, completions, feedback, min_score: float = 1.0) -> list[dict]:
    """SFT rows from the completions that score at least `min_score` (RAFT / STaR)."""
    return [{"prompt": rows[c.prompt_index]["prompt"], "completion": _as_completion(rows[c.prompt_index], c.text)}
            for c, f in zip(completions, feedback) if f.score is not None and f.score >= min_score]


@row_builder("unpaired_by_score", kind="unpaired")
def unpaired_by_score(rows, completions, feedback, threshold: float = 0.5) -> list[dict]:
    """Unpaired rows (PMPO, KTO-style): label = score >= threshold; unscored completions are dropped."""
    return [{"prompt": rows[c.prompt_index]["prompt"], "completion": _as_completion(rows[c.prompt_index], c.text),
             "label": f.score >= threshold} for c, f in zip(completions, feedback) if f.score is not None]


@row_builder("best_vs_worst", kind="pairs")
def best_vs_worst(rows, completions, feedback, min_gap: float = 1e-9) -> list[dict]:
    """One pair per prompt: its best-scored completion (chosen) vs its worst (rejected), when their scores differ
    by at least `min_gap` (online DPO from AI feedback, Guo et al. 2024). The first of equal scores is kept."""
    by_prompt: dict[int, list[tuple[float, int, Completion]]] = {}
    for order, (c, f) in enumerate(zip(completions, feedback)):
        if f.score is not None:
            by_prompt.setdefault(c.prompt_index, []).append((f.score, order, c))
    out = []
    for index, scored in sorted(by_prompt.items()):
        best = max(scored, key=lambda x: (x[0], -x[1]))
        worst = min(scored, key=lambda x: (x[0], x[1]))
        if best[0] - worst[0] >= min_gap:
            row = rows[index]
            out.append({"prompt": row["prompt"], "chosen": _as_completion(row, best[2].text),
                        "rejected": _as_completion(row, worst[2].text)})
    return out


def builder_for_kind(kind: str) -> str | None:
    return next((name for name, (k, _) in ROW_BUILDERS.items() if k == kind), None)


def make_row_builder(name: str, params: dict, kind: str) -> RowBuilder:
    """The builder `name` (auto: the one for `kind`) bound to `params`; a builder of another kind than the
    objective consumes, or an unknown parameter, is a RecipeError naming the key."""
    if name == "auto":
        name = builder_for_kind(kind)
        if name is None:
            raise RecipeError(f"`online.rows`: no row builder makes `{kind}` records (the objective's kind); "
                              f"builders: " + ", ".join(f"{n} ({k})" for n, (k, _) in ROW_BUILDERS.items()))
    if name not in ROW_BUILDERS:
        raise RecipeError(f"`online.rows`: unknown row builder `{name}`; available: "
                          + ", ".join(f"{n} (makes {k} records)" for n, (k, _) in ROW_BUILDERS.items()))
    made, fn = ROW_BUILDERS[name]
    if made != kind:
        raise RecipeError(f"`online.rows`: {name} makes `{made}` records, but the objective consumes `{kind}` "
                          f"records; use {builder_for_kind(kind) or 'another objective'}")
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("rows", "completions", "feedback")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise RecipeError(f"`online.rows_params`: {name} has no parameter {unknown[0]!r} (its parameters: "
                          f"{', '.join(allowed)})")
    return lambda rows, completions, feedback: fn(rows, completions, feedback, **params)
