"""Per-step credit from incorrect responses (Setlur et al. 2024, spec §7): split a response into steps, estimate
the value Q̂ of every step prefix from best-of-K rollouts of π_sft, take step advantages, find the critical step
(the "first pit": the first step where Q̂ falls to its minimum) and build training rows from it. Pure functions;
pipelines/step_negatives.py runs the rollouts.

    steps = split_steps("7 + 12 = 19\\n19 * 3 = 56\\nAnswer: 56")          # ["7 + 12 = 19\\n", "19 * 3 = 56\\n", ...]
    q = [q_hat(wins) for wins in rollout_wins]                            # wins: per prefix, K successes as bools
    c = critical_step(q[1:]); adv = advantages(q[0], q[1:])
"""
from __future__ import annotations

import math
import re


def split_steps(text: str, pattern: str | None = None) -> list[str]:
    """Steps of a response, each with its separator, so that "".join(steps) == text. Default: lines (a step ends
    after a newline); `pattern`: a step ends after each match of the regular expression. Empty steps (blank lines)
    are merged into the step before them."""
    if pattern is None:
        pieces = text.splitlines(keepends=True)
    else:
        pieces, start = [], 0
        for match in re.finditer(pattern, text):
            if match.end() > start:
                pieces.append(text[start:match.end()])
                start = match.end()
        if start < len(text):
            pieces.append(text[start:])
    steps: list[str] = []
    for piece in pieces:
        if steps and not piece.strip():
            steps[-1] += piece
        else:
            steps.append(piece)
    return steps


def step_of_line(steps: list[str], line: int) -> int:
    """The step that holds the `line`-th non-empty line of the response (a checker's line index -> a step index;
    past the last line: the last step)."""
    text, seen, position = "".join(steps), -1, len("".join(steps))
    offset = 0
    for piece in text.splitlines(keepends=True):
        if piece.strip():
            seen += 1
            if seen == line:
                position = offset
                break
        offset += len(piece)
    end = 0
    for index, step in enumerate(steps):
        end += len(step)
        if position < end:
            return index
    return len(steps) - 1


def bok_success(p: float, k: int) -> float:
    """Probability that best-of-k succeeds when one sample succeeds with probability p: 1 - (1 - p)^k."""
    return 1.0 - (1.0 - p) ** k


def q_hat(wins: list[bool], k: int | None = None) -> float:
    """The Monte Carlo value of a prefix under BoK(π_sft) from its rollouts' successes: with `k` (the paper's
    K=5), the rollouts form groups of k and Q̂ is the share of groups with any success (M = len(wins) / k groups;
    M = 1 gives 0 or 1); without, the per-rollout success rate."""
    if not wins:
        raise ValueError("q_hat needs at least one rollout")
    if k is None:
        return sum(map(bool, wins)) / len(wins)
    if len(wins) % k:
        raise ValueError(f"{len(wins)} rollouts do not form groups of K={k}")
    groups = [wins[i:i + k] for i in range(0, len(wins), k)]
    return sum(any(g) for g in groups) / len(groups)


def advantages(q0: float, qs: list[float]) -> list[float]:
    """Step advantages (Eq. 3): A_i = Q̂_i - Q̂_{i-1}, with Q̂ of the bare prompt before the first step."""
    return [q - before for q, before in zip(qs, [q0, *qs[:-1]])]


def critical_step(qs: list[float]) -> int:
    """The first step attaining the lowest Q̂ (ties: the earliest): after it, BoK(π_sft) no longer recovers."""
    if not qs:
        raise ValueError("a response without steps has no critical step")
    low = min(qs)
    return next(i for i, q in enumerate(qs) if q == low)


def has_pit(qs: list[float]) -> bool:
    """Whether some valued prefix is hopeless (Q̂ = 0): Self-Explore keeps only negatives with such a pit. Pass the
    prefixes that were rolled out (not the complete wrong answer, hopeless by definition)."""
    return bool(qs) and min(qs) == 0.0


def step_weights(adv: list[float], beta: float, max_weight: float = 20.0) -> list[float]:
    """Advantage-weighted regression (spec §7.3: π* ∝ π_sft · exp(A / β)): each step's NLL is weighted by
    exp(A_i / β), clipped to `max_weight` (the usual AWR guard against one step dominating)."""
    if beta <= 0:
        raise ValueError("beta must be > 0")
    return [min(math.exp(a / beta), max_weight) for a in adv]
