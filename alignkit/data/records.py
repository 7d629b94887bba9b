"""Record schemas (spec §0.4) and row validation. Every source becomes a list of plain dicts of one schema per kind:

- `pairs` (PreferencePair): prompt, chosen, rejected. TRL's standard format (strings) and conversational format
  (lists of {role, content}) are both accepted, and so is TRL's implicit-prompt form (chosen and rejected are whole
  conversations that share their opening turns), which becomes an explicit prompt.
- `sft`: prompt + completion (TRL's prompt-completion format), `messages` (last assistant turn is the target), or
  a preference row (its `chosen` is the target).
- `reward_pairs` (RMPair): a preference pair, plus optional `z_chosen` / `z_rejected` (the value of a spurious
  attribute of each response: a number, a string or a bool) and `margin` (a number: how much better chosen is).
- `forget` (UnlearnQA / UnlearnText, for forget and retain sets): `question` + `answer` (chat-templated), or
  `prompt` + `completion`, or raw `text` (every token is a label). TOFU's extra fields are kept.
- `unpaired` (UnpairedFeedback): prompt, completion (or `response`), label (true/false as in TRL's KTO format, or
  "accepted"/"rejected", or 1/0). A preference row becomes two records: chosen accepted, rejected rejected
  (`pairs_to_unpaired`).

Extra fields (ground truth answers, ids) are kept, so checkers can use them.
"""
from __future__ import annotations

from alignkit.errors import DataError

Text = str | list  # a string, or a list of {"role", "content"} messages


def _is_messages(value) -> bool:
    return (isinstance(value, list) and len(value) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value))


def _check_text(row: dict, field: str, where: str) -> Text:
    value = row.get(field)
    if value is None:
        raise DataError(f"{where}: missing field `{field}`")
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field `{field}` is empty")
        return value
    if _is_messages(value):
        return value
    raise DataError(f"{where}: field `{field}` must be a string or a list of {{role, content}} messages, "
                    f"got {type(value).__name__}")


def _split_implicit_prompt(chosen: list, rejected: list, where: str) -> tuple[list, list, list]:
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0 or chosen[n]["role"] != "assistant" or rejected[n]["role"] != "assistant":
        raise DataError(f"{where}: no `prompt` field, and `chosen`/`rejected` do not share opening turns "
                        "followed by an assistant turn (TRL implicit-prompt format)")
    return chosen[:n], chosen[n:], rejected[n:]


def normalize_row(row: dict, kind: str, where: str) -> dict:
    """Validate one row of `kind` and return it in canonical form; raise DataError naming `where` and the field."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    out = dict(row)
    if kind in ("pairs", "reward_pairs"):
        chosen, rejected = _check_text(row, "chosen", where), _check_text(row, "rejected", where)
        if "prompt" in row and row["prompt"] is not None:
            prompt = _check_text(row, "prompt", where)
        elif isinstance(chosen, list) and isinstance(rejected, list):
            prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected, where)
        else:
            raise DataError(f"{where}: missing field `prompt`")
        if isinstance(prompt, list) != isinstance(chosen, list) or isinstance(chosen, list) != isinstance(rejected,
                                                                                                           list):
            raise DataError(f"{where}: `prompt`, `chosen` and `rejected` must all be strings or all be message "
                            "lists (standard vs conversational format)")
        out.update(prompt=prompt, chosen=chosen, rejected=rejected)
        if kind == "reward_pairs":
            _check_reward_fields(row, where)
    elif kind == "sft":
        if "messages" in row:
            messages = row["messages"]
            if not _is_messages(messages) or messages[-1]["role"] != "assistant" or len(messages) < 2:
                raise DataError(f"{where}: field `messages` must be a list of {{role, content}} messages ending "
                                "with an assistant turn")
            out.update(prompt=messages[:-1], completion=messages[-1:])
        else:
            target = "completion" if "completion" in row else "chosen"
            out.update(prompt=_check_text(row, "prompt", where), completion=_check_text(row, target, where))
    elif kind == "unpaired":
        target = "completion" if "completion" in row else "response"
        out.update(prompt=_check_text(row, "prompt", where), completion=_check_text(row, target, where),
                   label=_check_label(row, where))
        if isinstance(out["prompt"], list) != isinstance(out["completion"], list):
            raise DataError(f"{where}: `prompt` and `{target}` must both be strings or both be message lists")
    elif kind == "forget":
        if "prompt" in row and ("completion" in row or "messages" not in row):
            out.update(prompt=_check_text(row, "prompt", where), completion=_check_text(row, "completion", where))
        elif "question" in row:
            # UnlearnQA: the question is a user turn, the answer the assistant turn (rendered with the chat template)
            out.update(prompt=[{"role": "user", "content": _check_text(row, "question", where)}],
                       completion=[{"role": "assistant", "content": _check_text(row, "answer", where)}])
        elif "text" in row:
            # UnlearnText: every token is a label; no chat template
            out.update(prompt="", completion=_check_text(row, "text", where), raw_text=True)
        else:
            raise DataError(f"{where}: a forget/retain row needs `question` + `answer`, `prompt` + `completion`, "
                            "or `text`")
    else:
        raise DataError(f"unknown record kind {kind!r}")
    return out


def _check_reward_fields(row: dict, where: str) -> None:
    if ("z_chosen" in row) != ("z_rejected" in row):
        raise DataError(f"{where}: `z_chosen` and `z_rejected` come together (the spurious attribute of each response)")
    for field in ("z_chosen", "z_rejected"):
        if field in row and not isinstance(row[field], (int, float, str, bool)):
            raise DataError(f"{where}: field `{field}` must be a number, a string or a bool, got "
                            f"{type(row[field]).__name__}")
    if "margin" in row and (isinstance(row["margin"], bool) or not isinstance(row["margin"], (int, float))):
        raise DataError(f"{where}: field `margin` must be a number, got {row['margin']!r}")


_LABELS = {True: True, False: False, "accepted": True, "rejected": False, "true": True, "false": False}  # 1 == True


def _check_label(row: dict, where: str) -> bool:
    value = row.get("label")
    key = value.lower() if isinstance(value, str) else value
    if isinstance(key, (bool, int, str)) and key in _LABELS:
        return _LABELS[key]
    raise DataError(f"{where}: field `label` must be true/false, 1/0 or accepted/rejected, got {value!r}")


def is_pair_row(row) -> bool:
    return isinstance(row, dict) and "chosen" in row and "rejected" in row and "label" not in row


def pairs_to_unpaired(row: dict) -> list[dict]:
    """One preference row -> an accepted record (chosen) and a rejected record (rejected); other fields are kept."""
    extra = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
    return [{**extra, "completion": row["chosen"], "label": True},
            {**extra, "completion": row["rejected"], "label": False}]
