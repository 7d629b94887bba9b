"""Row builders: how an online round's scored completions become training rows of an objective's record kind.
Each is one function registered by name with the kind it produces; `online.rows` in a recipe names one (auto: the
one registered first for the objective's kind), `online.rows_params` are its keyword arguments. A builder may also
say what the engines are prompted with (`prompts=`: FCP conditions the question on a positive feedback); without
one they get the prompt rows' own prompts.

    rows = make_row_builder("best_vs_worst", {"min_gap": 0.5}, kind="pairs")(prompt_rows, completions, feedback)
    prompts = make_prompt_maker("fcp_relabel", params, kind="feedback")(prompt_rows, "generate", seed)
"""
from __future__ import annotations

import inspect
import json
import random
from collections.abc import Callable
from pathlib import Path

from alignkit.errors import RecipeError
from alignkit.rollout.feedback import Feedback
from alignkit.rollout.types import Completion

RowBuilder = Callable[[list[dict], list[Completion], list[Feedback]], list[dict]]
# name -> (record kind, rows function, prompts function or None)
ROW_BUILDERS: dict[str, tuple[str, Callable, Callable | None]] = {}


def row_builder(name: str, kind: str, prompts: Callable | None = None):
    """`prompts(rows, purpose, seed, **params)`: what the engines generate from for `rows`; purpose is "generate"
    (a round's samples) or "evaluate" (the held-out greedy evaluation)."""
    def wrap(fn):
        ROW_BUILDERS[name] = (kind, fn, prompts)
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


# ---------------------------------------------------------------- feedback-conditional policies (FCP, spec §5)
def load_conditions(conditions, min_score: float = 0.8) -> list[str]:
    """The pool of positive conditions c+: a list of strings as given, or read from feedback rows (JSONL) — a
    file, or a run directory's `rows/` (what an FCP run wrote, e.g. the offline run) — keeping the feedback of rows
    scoring at least `min_score`, without length words (kinds/feedback.py condition_pool)."""
    from alignkit.kinds.feedback import condition_pool

    if isinstance(conditions, (list, tuple)):
        pool = [c for c in conditions if isinstance(c, str) and c.strip()]
        if len(pool) != len(conditions) or not pool:
            raise RecipeError("`online.rows_params.conditions`: a list of non-empty strings (or a path)")
        return list(pool)
    path = Path(str(conditions)).expanduser()
    files = sorted((path / "rows").glob("*.jsonl")) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        raise RecipeError(f"`online.rows_params.conditions`: {conditions} is neither a JSONL file of feedback rows "
                          "nor a run directory with rows/*.jsonl")
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    pool = condition_pool(rows, min_score)
    if not pool:
        raise RecipeError(f"`online.rows_params.conditions`: no feedback scoring >= {min_score} without length "
                          f"words in {conditions} ({len(rows)} rows)")
    return pool


def _pool(conditions, min_condition_score: float) -> list[str]:
    key = (json.dumps(conditions, sort_keys=True, default=str), min_condition_score)
    if key not in _POOLS:
        _POOLS[key] = load_conditions(conditions, min_condition_score)
    return _POOLS[key]


_POOLS: dict = {}


def conditioned_prompts(rows: list[dict], purpose: str, seed: int, conditions=None,
                        min_condition_score: float = 0.8, **_) -> list[dict]:
    """Each question under one c+ drawn from the pool (all n samples of a prompt share it: a random c+ per sample
    did worse in the paper); for the held-out evaluation one fixed c+ per question. No pool: the neutral
    condition <EF></EF>."""
    from alignkit.kinds.feedback import fcp_prompt, question_text

    pool = _pool(conditions, min_condition_score) if conditions is not None else [""]
    out = []
    for index, row in enumerate(rows):
        key = question_text(row["prompt"]) if purpose == "evaluate" else f"{seed}/{index}"
        out.append(fcp_prompt(row["prompt"], random.Random(f"fcp/{purpose}/{key}").choice(pool)))
    return out


def relabel_prompts(rows, purpose, seed, conditions=None, min_condition_score: float = 0.8, **_):
    if conditions is None:
        raise RecipeError("`online.rows_params.conditions`: fcp_relabel needs the pool of positive conditions c+ "
                          "(a run directory of an offline FCP run, a JSONL of feedback rows, or a list)")
    return conditioned_prompts(rows, purpose, seed, conditions, min_condition_score)


def offline_prompts(rows, purpose, seed, conditions=None, min_condition_score: float = 0.8, **_):
    """Offline FCP samples the starting policy on the plain questions; it is evaluated under c+ (or <EF></EF>)."""
    if purpose == "generate":
        return [r["prompt"] for r in rows]
    return conditioned_prompts(rows, purpose, seed, conditions, min_condition_score)


def _feedback_row(row: dict, c: Completion, f: Feedback) -> dict:
    return {"prompt": row["prompt"], "response": c.text, "response_ids": list(c.token_ids), "feedback": f.text,
            "score": f.score, **({"answer": row["answer"]} if "answer" in row else {})}


def _is_right(f: Feedback, correct_score: float) -> bool:
    return bool(f.details["correct"]) if "correct" in f.details else f.score is not None and f.score >= correct_score


@row_builder("fcp_offline", kind="feedback", prompts=offline_prompts)
def fcp_offline(rows, completions, feedback, correct_score: float = 1.0, conditions=None,
                min_condition_score: float = 0.8) -> list[dict]:
    """Offline FCP data as the paper builds it (§3.1): of the k samples per prompt, prompts whose samples are all
    right or all wrong are dropped; one right and one wrong response per remaining prompt with their feedback.
    Right = the provider's verdict (`correct` in its details) or score >= `correct_score`."""
    by_prompt: dict[int, list] = {}
    for c, f in zip(completions, feedback):
        by_prompt.setdefault(c.prompt_index, []).append((c, f))
    out = []
    for index, samples in sorted(by_prompt.items()):
        right = [s for s in samples if _is_right(s[1], correct_score)]
        wrong = [s for s in samples if not _is_right(s[1], correct_score)]
        if right and wrong:
            out += [_feedback_row(rows[index], *right[0]), _feedback_row(rows[index], *wrong[0])]
    return out


@row_builder("fcp_relabel", kind="feedback", prompts=relabel_prompts)
def fcp_relabel(rows, completions, feedback, conditions=None, min_condition_score: float = 0.8) -> list[dict]:
    """FCP bootstrapping (spec §5.4): the samples drawn under c+ (one per prompt from the pool `conditions`) keep
    their token ids and are relabelled with their fresh feedback (given on the unconditioned question); an empty
    critique trains under <EF></EF>."""
    return [_feedback_row(rows[c.prompt_index], c, f) for c, f in zip(completions, feedback)]


@row_builder("all_responses", kind="sft")
def all_responses(rows, completions, feedback) -> list[dict]:
    """SFT rows from every completion, right or wrong (the "SFT on all responses" control of FCP)."""
    return [{"prompt": rows[c.prompt_index]["prompt"], "completion": _as_completion(rows[c.prompt_index], c.text)}
            for c in completions]


def builder_for_kind(kind: str) -> str | None:
    return next((name for name, (k, _, _) in ROW_BUILDERS.items() if k == kind), None)


def make_row_builder(name: str, params: dict, kind: str) -> RowBuilder:
    """The builder `name` (auto: the one for `kind`) bound to `params`; a builder of another kind than the
    objective consumes, or an unknown parameter, is a RecipeError naming the key."""
    if name == "auto":
        name = builder_for_kind(kind)
        if name is None:
            raise RecipeError(f"`online.rows`: no row builder makes `{kind}` records (the objective's kind); "
                              f"builders: " + ", ".join(f"{n} ({k})" for n, (k, _, _) in ROW_BUILDERS.items()))
    if name not in ROW_BUILDERS:
        raise RecipeError(f"`online.rows`: unknown row builder `{name}`; available: "
                          + ", ".join(f"{n} (makes {k} records)" for n, (k, _, _) in ROW_BUILDERS.items()))
    made, fn, _ = ROW_BUILDERS[name]
    if made != kind:
        raise RecipeError(f"`online.rows`: {name} makes `{made}` records, but the objective consumes `{kind}` "
                          f"records; use {builder_for_kind(kind) or 'another objective'}")
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("rows", "completions", "feedback")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise RecipeError(f"`online.rows_params`: {name} has no parameter {unknown[0]!r} (its parameters: "
                          f"{', '.join(allowed)})")
    return lambda rows, completions, feedback: fn(rows, completions, feedback, **params)


def make_prompt_maker(name: str, params: dict, kind: str) -> Callable[[list[dict], str, int], list]:
    """What the engines are prompted with for prompt rows: the builder's `prompts` hook (FCP conditions), else the
    rows' own prompts. A pool of conditions is read (and checked) on the first call."""
    name = builder_for_kind(kind) if name == "auto" else name
    hook = ROW_BUILDERS[name][2] if name in ROW_BUILDERS else None
    if hook is None:
        return lambda rows, purpose, seed: [r["prompt"] for r in rows]
    return lambda rows, purpose, seed: hook(rows, purpose, seed, **params)
