"""`feedback` records: a question, a response and verbal feedback on it — what a feedback-conditional policy (FCP,
Luo et al. 2025) learns from. The feedback becomes a condition of the prompt, not a reward (spec §5.2):

    system:    You are a helpful assistant.         (a row's own system message is kept instead)
    user:      <EF>{feedback}</EF>{question}
    assistant: {response}

Fields: `prompt` (the question: a string or TRL-style messages), `response` (or `completion`), `feedback` (text;
empty = the neutral condition `<EF></EF>`, still trained on), optional `reference_answer`, `score`, and
`response_ids` (the generated token ids of an online round: trained on exactly, not re-tokenised). `<EF>` and
`</EF>` are special tokens the pipelines add to the model (models/special_tokens.py). Objective: fcp (token-mean
NLL of the response given its feedback)."""
from __future__ import annotations

from alignkit.data.encode import EncodeSettings, collate_sft, encode_sft, ids_of, render_prompt, truncate
from alignkit.data.records import check_text, is_messages
from alignkit.errors import DataError
from alignkit.kinds import RecordKind, register_kind
from alignkit.kinds.sft import inputs

EF_START, EF_END = "<EF>", "</EF>"
FCP_SYSTEM = "You are a helpful assistant."
# words about length: conditions that mention them collapse response length, so the c+ pool leaves them out (§5.5b)
LENGTH_WORDS = ("concise", "short", "brief", "succinct", "terse", "length", "lengthy", "long", "verbose", "wordy")


def fcp_prompt(question, feedback: str) -> list[dict]:
    """The conditioned prompt as chat messages, for any chat template: `<EF>{feedback}</EF>` before the (last) user
    turn's text; the FCP system prompt unless the question brings its own system message."""
    if isinstance(question, str):
        messages = [{"role": "user", "content": question}]
    else:
        messages = [dict(m) for m in question]
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise DataError("an FCP prompt needs a user turn to condition")
    last = users[-1]
    messages[last]["content"] = f"{EF_START}{feedback}{EF_END}{messages[last]['content']}"
    if messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": FCP_SYSTEM})
    return messages


def question_text(question) -> str:
    """The question as text (the last user turn of a message list)."""
    if isinstance(question, str):
        return question
    return next(m["content"] for m in reversed(question) if m["role"] == "user")


def mentions_length(text: str) -> bool:
    words = {w.strip(".,;:!?\"'()").lower() for w in text.split()}
    return any(w in words for w in LENGTH_WORDS)


def condition_pool(rows: list[dict], min_score: float, positive: bool = True, drop_length_words: bool = True
                   ) -> list[str]:
    """Distinct feedback texts of feedback rows scoring at least `min_score` (positive) or at most it (negative),
    in first-seen order; without length words by default; empty feedback is never a condition."""
    pool, seen = [], set()
    for row in rows:
        text, score = (row.get("feedback") or "").strip(), row.get("score")
        if not text or score is None or text in seen:
            continue
        if (score >= min_score) if positive else (score <= min_score):
            if drop_length_words and mentions_length(text):
                continue
            seen.add(text)
            pool.append(text)
    return pool


def normalize(row: dict, where: str) -> dict:
    question = check_text(row, "prompt", where)
    target = "response" if "response" in row else "completion"
    response = check_text(row, target, where)
    if isinstance(response, list):
        if response[-1]["role"] != "assistant":
            raise DataError(f"{where}: field `{target}` must end with an assistant message")
        response = response[-1]["content"]
    if "feedback" not in row or not isinstance(row["feedback"], str):
        raise DataError(f"{where}: field `feedback` must be a string (empty for the neutral condition <EF></EF>)")
    if "score" in row and row["score"] is not None and not isinstance(row["score"], (int, float)):
        raise DataError(f"{where}: field `score` must be a number")
    ids = row.get("response_ids")
    if ids is not None and not (isinstance(ids, list) and ids and all(isinstance(t, int) for t in ids)):
        raise DataError(f"{where}: field `response_ids` must be a non-empty list of token ids")
    if is_messages(question) and not any(m["role"] == "user" for m in question):
        raise DataError(f"{where}: field `prompt` has no user message to condition")
    return {**row, "question": question, "feedback": row["feedback"], "response": response,
            "prompt": fcp_prompt(question, row["feedback"]),
            "completion": [{"role": "assistant", "content": response}]}


def encode(tokenizer, row: dict, s: EncodeSettings) -> dict:
    """As an sft row (prompt masked); with `response_ids`, those ids are the completion (an online round's own
    tokens, EOS included when the model ended its turn), so relabelling never re-tokenises a response."""
    for marker in (EF_START, EF_END):
        if marker not in tokenizer.get_vocab():
            raise DataError(f"the tokenizer has no {marker} token; feedback rows need the FCP condition markers "
                            "(the pipelines add them: models/special_tokens.py)")
    if row.get("response_ids") is None:
        return encode_sft(tokenizer, row, s)
    prompt = ids_of(tokenizer, render_prompt(tokenizer, row["prompt"], s.use_chat_template))
    prompt, completion, cut = truncate(prompt, list(row["response_ids"]), s)
    if not completion:
        raise DataError("a response has no tokens left after truncation; raise data.max_length")
    return {"prompt_ids": prompt, "completion_ids": completion, "truncated": cut}


register_kind(RecordKind("feedback", normalize, encode, collate_sft, inputs, sequences_per_example=1,
                         shape="prompt + response + feedback", special_tokens=(EF_START, EF_END)))
