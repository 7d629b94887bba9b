"""Built-in datasets, generated deterministically from a seed, with train and held-out splits.

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


BUILTIN_DATASETS: dict[str, tuple[Callable[..., list[dict]], str, Callable[[dict, str], dict] | None]] = {
    # name: (generator(split, seed, size), record kind, behavioural scorer)
    "concise_arithmetic": (concise_arithmetic, "pairs", score_completion),
}
