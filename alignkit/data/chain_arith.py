"""`builtin:chain_arith`: seeded multi-step arithmetic with one line per step, for methods that need a checker per
step (per-step negatives: the *true* first wrong step) and a verifier for the final answer (feedback-conditional
policies, online methods).

A problem: a start value and 3-4 operations on 1-2 digit operands ("Start with 7. Add 12, then multiply by 3, then
subtract 15."). The solution, one line per step, then the answer:

    7 + 12 = 19
    19 * 3 = 57
    57 - 15 = 42
    Answer: 42

Rows are `sft` records (prompt + completion = the solution) with `answer`, `start` and `ops` ([[op, operand], ...])
for the checkers. Splits: `train` (2048) and `test` (128, held out: no test problem appears in train), and the
harder `train_hard` / `test_hard` (5-6 operations, 2-digit operands). `chain_arith(..., ops=(lo, hi),
max_operand=N)` sets the difficulty directly.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

SPLITS = {"train": (2048, "easy"), "test": (128, "easy"), "train_hard": (2048, "hard"), "test_hard": (128, "hard")}
LEVELS = {"easy": ((3, 4), 20), "hard": ((5, 6), 99)}
_WORDS = {"+": ("add {b}", "plus {b}"), "-": ("subtract {b}", "minus {b}"), "*": ("multiply by {b}", "times {b}")}
STEP_RE = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*\.?\s*$")
ANSWER_RE = re.compile(r"^\s*Answer:\s*(-?\d+)\s*\.?\s*$")
MAX_VALUE = 999  # intermediate results stay within three digits


def _problem(rng: random.Random, ops: tuple[int, int], max_operand: int) -> tuple[int, list[tuple[str, int]]]:
    value = start = rng.randint(2, max_operand)
    steps = []
    for _ in range(rng.randint(*ops)):
        choices = [op for op, ok in (("+", value < MAX_VALUE), ("-", value >= 1),
                                     ("*", 2 <= value <= MAX_VALUE // 2)) if ok]
        op = rng.choice(choices)
        if op == "*":
            b = rng.randint(2, min(9, MAX_VALUE // value))
        elif op == "+":
            b = rng.randint(1, min(max_operand, MAX_VALUE - value))
        else:
            b = rng.randint(1, min(max_operand, value))
        value = apply(value, op, b)
        steps.append((op, b))
    return start, steps


def apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def question(start: int, ops: list[tuple[str, int]], rng: random.Random) -> str:
    parts = [rng.choice(_WORDS[op]).format(b=b) for op, b in ops]
    said = ", then ".join(parts)
    return (f"Start with {start}. {said[0].upper()}{said[1:]}. What is the result? Work it out one step per line "
            "(like `7 + 12 = 19`), then write `Answer: N`.")


def solution(start: int, ops: list[tuple[str, int]]) -> str:
    lines, value = [], start
    for op, b in ops:
        new = apply(value, op, b)
        lines.append(f"{value} {op} {b} = {new}")
        value = new
    return "\n".join([*lines, f"Answer: {value}"])


def chain_arith(split: str, seed: int = 0, size: int | None = None, ops: tuple[int, int] | None = None,
                max_operand: int | None = None) -> list[dict]:
    """Problems of `split` (held-out problems never appear in the training split of the same level and seed)."""
    if split not in SPLITS:
        raise KeyError(split)
    default_n, level = SPLITS[split]
    n = size or default_n
    if split.startswith("test") and n > default_n:
        raise ValueError(f"chain_arith: at most {default_n} held-out problems in `{split}` (the training split "
                         "skips exactly those)")
    level_ops, level_operand = LEVELS[level]
    ops, max_operand = ops or level_ops, max_operand or level_operand
    rng = random.Random(f"chain_arith/{seed}/{level}/{ops}/{max_operand}")
    held_out = split.startswith("test")
    seen: set = set()
    rows: list[dict] = []
    # the held-out problems are drawn first from the same stream, so a train split skips exactly them
    want_test = SPLITS[f"test{split.removeprefix('train').removeprefix('test')}"][0]
    misses = 0
    while len(rows) < n:
        start, steps = _problem(rng, ops, max_operand)
        key = (start, tuple(steps))
        if key in seen:
            misses += 1
            if misses > 100 * n:  # the settings allow fewer distinct problems than asked for
                raise ValueError(f"chain_arith: ops={ops}, max_operand={max_operand} give fewer than "
                                 f"{n + SPLITS['test'][0]} distinct problems; raise them or ask for fewer")
            continue
        seen.add(key)
        if not held_out and want_test > 0:  # still inside the held-out block: not a training problem
            want_test -= 1
            continue
        wording = random.Random(f"chain_arith/wording/{seed}/{key}")  # per problem: the problem stream stays shared
        rows.append({"prompt": [{"role": "user", "content": question(start, steps, wording)}],
                     "completion": [{"role": "assistant", "content": solution(start, steps)}],
                     "answer": apply_all(start, steps), "start": start, "ops": [list(s) for s in steps]})
        if held_out and len(rows) >= n:
            break
    return rows


def apply_all(start: int, ops: list[tuple[str, int]]) -> int:
    value = start
    for op, b in ops:
        value = apply(value, op, b)
    return value


@dataclass
class ChainCheck:
    correct: bool  # the last `Answer: N` line has the right N
    format: bool  # every line is a step `a op b = c` or the final `Answer: N`, which comes last
    first_wrong_step: int | None  # index (0-based, over the non-empty lines) of the first line that leaves the
    # right solution path: a wrong operand, operation or result, a line that is not a step, an early or wrong
    # answer; None when every line is right and the answer is there
    steps_right: int  # lines right before the first wrong one


def check(row: dict, completion: str) -> ChainCheck:
    """The exact checker: each line against the problem's own solution path, and the final answer."""
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    ops = [tuple(x) for x in row["ops"]]
    value, first_wrong, formatted, answer = row["start"], None, True, None
    for i, line in enumerate(lines):
        step, final = STEP_RE.match(line), ANSWER_RE.match(line)
        if final is not None:
            answer = int(final.group(1))
            formatted = formatted and i == len(lines) - 1
            if first_wrong is None and (i != len(ops) or answer != row["answer"]):
                first_wrong = i
            continue
        if step is None:
            formatted = False
            first_wrong = i if first_wrong is None else first_wrong
            continue
        a, op, b, c = int(step.group(1)), step.group(2), int(step.group(3)), int(step.group(4))
        if first_wrong is None:
            if i >= len(ops) or (a, op, b) != (value, *ops[i]) or c != apply(a, op, b):
                first_wrong = i
            else:
                value = c
    if first_wrong is None and answer is None:
        first_wrong = len(lines)  # every step right, but the answer line is missing
    formatted = formatted and answer is not None
    return ChainCheck(correct=answer is not None and answer == row["answer"],
                      format=formatted, first_wrong_step=first_wrong,
                      steps_right=first_wrong if first_wrong is not None else len(lines))


def score_chain(row: dict, completion: str) -> dict[str, float]:
    """Behavioural metrics of one generation (report and online evaluation)."""
    result = check(row, completion)
    return {"correct": float(result.correct), "format": float(result.format),
            "steps_right": float(result.steps_right) / max(1, len(row["ops"]) + 1),
            "lines": float(len([x for x in completion.splitlines() if x.strip()]))}
