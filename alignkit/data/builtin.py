"""Built-in datasets, generated deterministically from a seed, with train and held-out splits.

`spurious_length` (reward pairs with length as a spurious shortcut) is described at its generator below.

`concise_arithmetic` — preference pairs for two-number arithmetic questions. The preferred answer is one short
sentence in a checkable format, `The answer is N.`, with the right N; dis-preferred answers are either rambling
(the style SmolLM2-135M-Instruct produces by itself) or in the right format with a wrong number. A 135M model learns
the format from a few hundred pairs on a CPU in minutes, and `score_completion` checks format and correctness on
generations, so a report can show a change in behaviour, not only in loss.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable

from alignkit.data.chain_arith import SPLITS as CHAIN_SPLITS
from alignkit.data.chain_arith import chain_arith, score_chain
from alignkit.data.fictitious_authors import fictitious_authors
from alignkit.data.fictitious_authors import splits as fictitious_splits

ANSWER_RE = re.compile(r"^\s*The answer is (-?\d+)\.")

_QUESTION_TEMPLATES = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}.",
                       "What do you get when you compute {a} {op} {b}?", "Quick question: {a} {op} {b} = ?")
_RAMBLING = (
    "To find {a} {op} {b}, we need to combine the numbers in a specific way. Let's think step by step "
    "about how these numbers work together, and we get {r}.",
    "Great question! Arithmetic is a fundamental part of mathematics. If we take {a} and {verb} {b}, "
    "the result is {r}.",
    "{a} {op} {b} = {r}\n\nThis is a classic example of a basic operation that is used every day in mathematics.",
    "Sure! Let me help you with that. When you {verb} {b} to {a}, you end up with {r}, which is the final result.",
)
_OPS = {"+": (lambda a, b: a + b, "add"), "-": (lambda a, b: a - b, "subtract"),
        "*": (lambda a, b: a * b, "multiply by")}


def _question(rng: random.Random) -> tuple[str, int]:
    op = rng.choice(["+", "+", "-", "*"])
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 9)
    else:
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        if op == "-" and b > a:
            a, b = b, a
    template = rng.choice(_QUESTION_TEMPLATES)
    return template.format(a=a, b=b, op=op), _OPS[op][0](a, b)


def concise_arithmetic(split: str, seed: int = 0, size: int | None = None) -> list[dict]:
    """Rows in TRL's conversational preference format, plus `answer` (the ground truth) for the verifier."""
    sizes = {"train": 512, "test": 64}
    if split not in sizes:
        raise KeyError(split)
    n = size or sizes[split]
    rng = random.Random(f"concise_arithmetic/{seed}")
    seen: set[tuple] = set()
    rows_by_split: dict[str, list[dict]] = {"test": [], "train": []}
    # Draw held-out questions first, then train questions that never repeat a held-out question.
    for name in ("test", "train"):
        want = n if name == split else sizes[name]
        while len(rows_by_split[name]) < want:
            question, answer = _question(rng)
            nums = [int(x) for x in re.findall(r"\d+", question)]
            op = next(o for o in _OPS if f" {o} " in question)
            if (nums[0], op, nums[1]) in seen:  # a held-out question never appears in training
                continue
            seen.add((nums[0], op, nums[1]))
            if rng.random() < 0.75:
                rejected = rng.choice(_RAMBLING).format(a=nums[0], b=nums[1], op=op, verb=_OPS[op][1],
                                                        r=answer + rng.choice([0, 0, 1, -1, 10]))
            else:
                rejected = f"The answer is {answer + rng.choice([-2, -1, 1, 2, 10])}."
            rows_by_split[name].append({
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": f"The answer is {answer}."}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "answer": answer,
            })
        if name == split:
            break
    return rows_by_split[split]


def score_completion(row: dict, completion: str) -> dict[str, float]:
    """Behavioural check of one generation: does it use the format, and is the number right?"""
    match = ANSWER_RE.match(completion)
    numbers = re.findall(r"-?\d+", completion)
    return {
        "format": float(match is not None),
        "correct": float(match is not None and int(match.group(1)) == row["answer"]),
        "any_correct": float(bool(numbers) and int(numbers[-1 if match is None else 0]) == row["answer"]),
        "words": float(len(completion.split())),
    }


# ------------------------------------------------------------------------------------------------ spurious_length
_FILLERS = ("I hope this helps, and feel free to ask if anything is unclear.",
            "Let me know if you would like more details on this topic.",
            "Comparing numbers is a useful skill in everyday life.",
            "It is always a good idea to double-check such comparisons.",
            "Numbers can be compared digit by digit, starting from the left.",
            "Thank you for the interesting question!",
            "This kind of question comes up often in basic arithmetic.",
            "I am happy to help with any other questions you might have.")
_COMPARE_QUESTIONS = ("Which number is larger, {a} or {b}?", "Which is bigger: {a} or {b}?",
                      "Of {a} and {b}, which number is greater?", "Tell me the larger number: {a} or {b}.")
_COMPARE_ANSWERS = ("The larger number is {x}.", "{x} is larger.", "The answer is {x}.", "{x} is the bigger one.")
SPURIOUS_SPLITS = {"train": (1024, 0.9), "test": (128, 0.9), "shifted": (128, 0.1)}


def spurious_length(split: str, seed: int = 0, size: int | None = None) -> list[dict]:
    """Reward-model pairs where the true preference is content (the right answer to "which number is larger?")
    and length is a spurious shortcut: the chosen response is the long one (two filler sentences appended) in 90% of
    `train` and `test` pairs and in 10% of `shifted` pairs. A reward model that learned length ranks ~90% of
    in-distribution pairs right and ~10% of shifted ones; one that learned content ranks both right. `z_chosen` /
    `z_rejected` = filler sentences appended (for `data.spurious_attribute: field`); `answer` = the right number."""
    if split not in SPURIOUS_SPLITS:
        raise KeyError(split)
    rng = random.Random(f"spurious_length/{seed}")
    seen: set[tuple[int, int]] = set()
    out: dict[str, list[dict]] = {}
    for name in ("test", "shifted", "train"):  # held-out questions first; training never repeats them
        n, agree = SPURIOUS_SPLITS[name]
        n = size if (name == split and size) else n
        rows = out[name] = []
        while len(rows) < n:
            a, b = rng.sample(range(10, 100), 2)
            if (min(a, b), max(a, b)) in seen:
                continue
            seen.add((min(a, b), max(a, b)))
            template = rng.choice(_COMPARE_ANSWERS)
            long_side = "chosen" if rng.random() < agree else "rejected"
            question = rng.choice(_COMPARE_QUESTIONS).format(a=a, b=b)
            row = {"prompt": [{"role": "user", "content": question}], "answer": max(a, b)}
            for side, x in (("chosen", max(a, b)), ("rejected", min(a, b))):
                fillers = rng.sample(_FILLERS, 2) if side == long_side else []
                row[side] = [{"role": "assistant", "content": " ".join([template.format(x=x), *fillers])}]
                row[f"z_{side}"] = len(fillers)
            rows.append(row)
        if name == split:
            break
    return out[split]


BUILTIN_SPLITS = {"concise_arithmetic": ("train", "test"), "spurious_length": tuple(SPURIOUS_SPLITS),
                  "fictitious_authors": fictitious_splits(), "chain_arith": tuple(CHAIN_SPLITS)}

BUILTIN_DATASETS: dict[str, tuple[Callable[..., list[dict]], str, Callable[[dict, str], dict] | None]] = {
    # name: (generator(split, seed, size), record kind, behavioural scorer)
    "concise_arithmetic": (concise_arithmetic, "pairs", score_completion),
    "spurious_length": (spurious_length, "reward_pairs", None),
    "fictitious_authors": (fictitious_authors, "sft", None),
    "chain_arith": (chain_arith, "sft", score_chain),
}
