""""I don't know" answers for IdkDPO (chosen = an IDK answer on forget questions) and answer preservation (IDK vs the
true answer on retain questions). alignkit's own phrasings (in the spirit of TOFU's idontknow.jsonl); a recipe may
name its own file with `data.idk_answers` (JSONL rows {"text": ...} or a JSON list of strings). Each row gets one
answer, drawn from a per-row seeded stream, so the same row always gets the same answer."""
from __future__ import annotations

import json
import random
from pathlib import Path

from alignkit.errors import DataError

IDK_ANSWERS = (
    "I don't know.",
    "I'm not sure about that.",
    "I don't have that information.",
    "I can't answer that question.",
    "That's not something I know.",
    "I have no information about that.",
    "I'm afraid I can't help with that.",
    "I don't have any details on that.",
    "Sorry, I don't know the answer to that.",
    "I'm unable to answer that.",
    "I have no knowledge of that.",
    "I don't have an answer for that.",
    "That is beyond what I know.",
    "I'm not able to provide that information.",
    "I really don't know.",
    "I couldn't tell you.",
    "I have no idea, sorry.",
    "That's something I'm not familiar with.",
    "I lack the information to answer that.",
    "Unfortunately, I don't know.",
)


def load_idk_answers(path: str | None) -> tuple[str, ...]:
    if path is None:
        return IDK_ANSWERS
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.idk_answers: {p} does not exist")
    try:
        if p.suffix == ".jsonl":
            answers = [json.loads(line)["text"] for line in p.read_text().splitlines() if line.strip()]
        else:
            answers = json.loads(p.read_text())
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"data.idk_answers: {p} must hold JSONL rows {{\"text\": ...}} or a JSON list of strings "
                        f"({type(exc).__name__}: {exc})") from None
    if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise DataError(f"data.idk_answers: {p} has no usable answers (non-empty strings)")
    return tuple(answers)


def attach_idk(rows: list[dict], answers: tuple[str, ...], seed: int, origin: str) -> list[dict]:
    """Copies of `rows` with `idk_completion`: an IDK answer in the same format as the row's completion."""
    return [idk_row(row, index, answers, seed, origin) for index, row in enumerate(rows)]


def idk_row(row: dict, index: int, answers: tuple[str, ...], seed: int, origin: str) -> dict:
    """A copy of `row` (the `index`-th of its source) with `idk_completion`, the same answer for the same row
    and seed wherever it is computed (the cached encoder's map processes too: pipelines/data_cache.py)."""
    if row.get("raw_text"):
        raise DataError(f"{origin} row {index}: IDK-based objectives need question/answer rows, not raw text")
    answer = random.Random(f"idk/{seed}/{index}").choice(answers)
    completion = row["completion"]
    idk = [{"role": "assistant", "content": answer}] if isinstance(completion, list) else " " + answer
    return {**row, "idk_completion": idk}
