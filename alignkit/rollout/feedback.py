"""Feedback and verifier providers: each turns (prompt row, completion text) into a `Feedback` record — a score (or
None when the provider only gives words), verbal feedback, and details. Rule-based verifiers are exact and free;
the reward-model scorer uses a trained RM; the LLM judge asks a rollout engine for a critique and parses a score.

    provider = ExactAnswer()                  # rows carry `answer` (the reference final answer)
    records = provider.batch(rows, texts)     # [Feedback]
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from alignkit.rollout.types import SamplingParams

log = logging.getLogger(__name__)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class Feedback:
    score: float | None  # higher is better; None = verbal feedback only
    text: str  # verbal feedback (what a feedback-conditional policy is conditioned on)
    source: str  # which provider
    details: dict = field(default_factory=dict)


def final_number(text: str) -> str | None:
    """The final answer of an arithmetic response: the number after '####' or 'answer is', else the last number in
    the text; thousands separators dropped, '7.0' -> '7'."""
    marked = re.search(r"(?:####|answer is|answer:)\s*\$?(" + _NUMBER.pattern + ")", text, re.IGNORECASE)
    numbers = [marked.group(1)] if marked else _NUMBER.findall(text)
    if not numbers:
        return None
    value = numbers[-1].replace(",", "")
    try:
        as_float = float(value)
    except ValueError:
        return None
    return str(int(as_float)) if as_float == int(as_float) else str(as_float)


class Provider:
    name = "provider"

    def __call__(self, row: dict, completion: str) -> Feedback:
        raise NotImplementedError

    def batch(self, rows: list[dict], completions: list[str]) -> list[Feedback]:
        return [self(r, c) for r, c in zip(rows, completions)]


class ExactAnswer(Provider):
    """1 if the completion's final number equals the row's reference answer (`answer_field`), else 0."""
    name = "exact_answer"

    def __init__(self, answer_field: str = "answer"):
        self.answer_field = answer_field

    def __call__(self, row: dict, completion: str) -> Feedback:
        if self.answer_field not in row:
            raise KeyError(f"exact_answer needs the reference answer in field `{self.answer_field}` of every row")
        want, got = final_number(str(row[self.answer_field])), final_number(completion)
        if got is None:
            return Feedback(0.0, "The response does not state a final numeric answer.", self.name,
                            {"expected": want, "got": None})
        if got == want:
            return Feedback(1.0, "The final answer is correct.", self.name, {"expected": want, "got": got})
        return Feedback(0.0, f"The final answer {got} is wrong; the correct answer is {want}.", self.name,
                        {"expected": want, "got": got})


class FormatCheck(Provider):
    """1 if the completion matches a regular expression (e.g. r'####\\s*-?\\d+\\s*$'), and optionally stays under
    `max_words`; the feedback says what is wrong."""
    name = "format"

    def __init__(self, pattern: str, description: str = "the required format", max_words: int | None = None):
        self.pattern, self.description, self.max_words = re.compile(pattern, re.DOTALL), description, max_words

    def __call__(self, row: dict, completion: str) -> Feedback:
        problems = []
        if not self.pattern.search(completion):
            problems.append(f"it does not follow {self.description}")
        words = len(completion.split())
        if self.max_words is not None and words > self.max_words:
            problems.append(f"it is {words} words long (at most {self.max_words})")
        text = "The response is well formatted." if not problems else "The response is badly formatted: " + \
            "; ".join(problems) + "."
        return Feedback(0.0 if problems else 1.0, text, self.name, {"words": words})


class RewardModelScorer(Provider):
    """The reward of a trained reward model (alignkit's or any HF sequence-classification RM) on (prompt, response);
    no verbal feedback."""
    name = "reward_model"

    def __init__(self, model_dir: str, dtype: str = "float32", batch_size: int = 16):
        from alignkit.evaluation.reward import RewardScorer

        self.scorer = RewardScorer(model_dir, dtype, batch_size)

    def batch(self, rows: list[dict], completions: list[str]) -> list[Feedback]:
        prompts = [r["prompt"] for r in rows]
        responses = [[{"role": "assistant", "content": c}] if isinstance(p, list) else c
                     for p, c in zip(prompts, completions)]
        rewards, _ = self.scorer.score(prompts, responses)
        return [Feedback(float(x), "", self.name) for x in rewards]

    def __call__(self, row: dict, completion: str) -> Feedback:
        return self.batch([row], [completion])[0]


DEFAULT_JUDGE_TEMPLATE = (
    "You are grading a response.\n\nQuestion:\n{prompt}\n\nResponse:\n{response}\n\n"
    "Write one or two sentences of critique, then a last line of the form 'Score: N' with N from 0 to {max_score}.")


class LLMJudge(Provider):
    """Asks a rollout engine (or pool) for a verbal critique with `template` ({prompt}, {response}, {max_score}) and
    parses the score with `score_pattern`; the score is scaled to [0, 1]; an unparsable critique scores None and
    keeps its text (counted in details)."""
    name = "llm_judge"

    def __init__(self, engine, template: str = DEFAULT_JUDGE_TEMPLATE, max_score: float = 10.0,
                 score_pattern: str = r"score\s*[:=]\s*(-?\d+(?:\.\d+)?)", max_tokens: int = 128):
        for key in ("{prompt}", "{response}"):
            if key not in template:
                raise ValueError(f"the judge template must contain {key}")
        self.engine, self.template, self.max_score = engine, template, max_score
        self.pattern, self.max_tokens = re.compile(score_pattern, re.IGNORECASE), max_tokens

    def parse(self, critique: str) -> float | None:
        found = self.pattern.findall(critique)
        if not found:
            return None
        return min(max(float(found[-1]) / self.max_score, 0.0), 1.0)

    def batch(self, rows: list[dict], completions: list[str]) -> list[Feedback]:
        prompts = [[{"role": "user", "content": self.template.format(prompt=_prompt_text(r["prompt"]),
                                                                     response=c, max_score=f"{self.max_score:g}")}]
                   for r, c in zip(rows, completions)]
        critiques = self.engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=self.max_tokens))
        out = []
        for c in critiques:
            score = self.parse(c.text)
            critique = self.pattern.sub("", c.text).strip()
            out.append(Feedback(score, critique, self.name, {"raw": c.text, "parsed": score is not None}))
        return out

    def __call__(self, row: dict, completion: str) -> Feedback:
        return self.batch([row], [completion])[0]


CRITIQUE_TEMPLATE = (
    "Here is a question, a reference final answer, and a response to the question.\n\n"
    "Question:\n{prompt}\n\nReference final answer: {reference}\n\nResponse:\n{response}\n\n"
    "Do four things.\n"
    "1. Act as a real user who asked the question: give 1-3 colloquial first-person sentences of purely subjective "
    "sentiment about the response; do not quote or name any formula, number or symbol.\n"
    "2. Act as a professional reviewer: judge correctness (against the reference final answer only), logical rigour, "
    "completeness and clarity.\n"
    "3. Give a 1-3 sentence high-level summary of the response using only adjectives and adverbs; do not say where "
    "it is wrong.\n"
    "4. Give an integer score from 0 to 10.\n\n"
    "Answer in exactly this format:\n"
    "### User-style feedback: ...\n### Analysis along several dimensions: ...\n### High-level summary: ...\n"
    "### Score (0-10): ...")
CRITIQUE_SECTIONS = {"user-style feedback": "user", "analysis along several dimensions": "analysis",
                     "high-level summary": "summary", "score (0-10)": "score"}


def parse_critique(text: str) -> dict:
    """The four sections of a critique (spec §5.4), split on `###`: {user, analysis, summary, score (the raw
    text)}, missing sections empty; `score_value` is the integer score or None; `ok` when all four are non-empty
    and the score is an integer."""
    out = {"user": "", "analysis": "", "summary": "", "score": ""}
    for part in text.split("###"):
        head, _, body = part.partition(":")
        key = CRITIQUE_SECTIONS.get(head.strip().lower())
        if key is not None and not out[key]:
            out[key] = body.strip()
    match = re.fullmatch(r"\s*(\d+)\s*(?:/\s*10)?\s*\.?\s*", out["score"])
    out["score_value"] = int(match.group(1)) if match and 0 <= int(match.group(1)) <= 10 else None
    out["ok"] = all(out[k] for k in ("user", "analysis", "summary")) and out["score_value"] is not None
    return out


class Critique(Provider):
    """An LLM judge (a rollout engine) that writes the FCP paper's four-section critique (spec §5.4): user-style
    feedback, a reviewer's analysis, a high-level summary and a 0-10 score. The feedback text is the summary
    (`critique_type: pro`) or the user-style sentences (`user`); the score is score/10. The reference code's failure
    rules: an unparsable critique is asked again (up to `retries` times, sampled at `retry_temperature`); after the
    last retry the partly parsed critique is kept and a missing or non-integer score gives 0.5; only an engine
    error gives an empty critique (score 0.5) — whose `<EF></EF>` row is still trained on."""
    name = "critique"

    def __init__(self, engine, critique_type: str = "pro", template: str = CRITIQUE_TEMPLATE,
                 answer_field: str = "answer", max_tokens: int = 256, retries: int = 3,
                 retry_temperature: float = 1.0, seed: int = 0):
        if critique_type not in ("pro", "user"):
            raise ValueError(f"critique_type must be pro or user, got {critique_type!r}")
        for key in ("{prompt}", "{response}"):
            if key not in template:
                raise ValueError(f"the critique template must contain {key}")
        self.engine, self.critique_type, self.template, self.answer_field = engine, critique_type, template, \
            answer_field
        self.max_tokens, self.retries, self.retry_temperature, self.seed = max_tokens, retries, retry_temperature, seed

    def _ask(self, prompts: list, attempt: int) -> list[str]:
        sampling = SamplingParams(temperature=0.0 if attempt == 0 else self.retry_temperature,
                                  max_tokens=self.max_tokens, seed=self.seed + attempt)
        return [c.text for c in sorted(self.engine.generate(prompts, sampling), key=lambda c: c.prompt_index)]

    def batch(self, rows: list[dict], completions: list[str]) -> list[Feedback]:
        prompts = [[{"role": "user", "content": self.template.format(
            prompt=_prompt_text(r["prompt"]), response=c, reference=r.get(self.answer_field, "(none given)"))}]
            for r, c in zip(rows, completions)]
        try:
            texts = self._ask(prompts, 0)
        except Exception as exc:  # the engine failed or timed out: empty critiques, neutral score
            return [Feedback(0.5, "", self.name, {"error": _first_line(exc)}) for _ in rows]
        parsed = [parse_critique(t) for t in texts]
        attempts = [1] * len(texts)
        for attempt in range(1, self.retries + 1):
            todo = [i for i, p in enumerate(parsed) if not p["ok"]]
            if not todo:
                break
            try:
                again = self._ask([prompts[i] for i in todo], attempt)
            except Exception as exc:  # a failed retry: the partly parsed critiques are kept (the last retry's rule)
                log.warning("critique retry %d failed (%s); keeping %d partly parsed critique(s)", attempt,
                            _first_line(exc), len(todo))
                break
            for i, text in zip(todo, again):
                texts[i], parsed[i], attempts[i] = text, parse_critique(text), attempt + 1
        out = []
        for text, p, tries in zip(texts, parsed, attempts):
            score = p["score_value"] / 10 if p["score_value"] is not None else 0.5
            feedback = p["summary"] if self.critique_type == "pro" else p["user"]
            out.append(Feedback(score, feedback, self.name, {**{k: p[k] for k in ("user", "analysis", "summary")},
                                                             "raw": text, "parsed": p["ok"], "attempts": tries}))
        return out

    def __call__(self, row: dict, completion: str) -> Feedback:
        return self.batch([row], [completion])[0]


class ChainCritic(Provider):
    """A built-in, rule-based verbal critic for `builtin:chain_arith`, so FCP runs offline on CPU: the exact
    checker's findings (right or not, the first wrong step, the format) become a score and reviewer-style sentences
    in the critique's three voices — a user's sentiment, a reviewer's analysis (which names the first wrong step),
    a high-level summary of adjectives that does not say where (the condition of `critique_type: pro`). The wording
    is drawn per response from several phrasings (seeded by the response), so conditions vary as an LLM's would.
    Score (0-10, /10): right and well formatted 10; right answer, bad format 6; wrong: 1-4 by the share of right
    steps; no answer 0."""
    name = "chain_critic"
    SUMMARY = {
        "right": ["The response is correct, clear and carefully reasoned.",
                  "An accurate, rigorous and well organised solution.",
                  "Correct and logically sound; the reasoning flows cleanly and completely.",
                  "Precise, coherent and fully correct.",
                  "A thorough and accurate solution, neatly presented.",
                  "Concise and correct: a tidy, accurate solution."],
        "format": ["The final result is right, but the presentation is messy and loosely structured.",
                   "Correct in the end, though untidy and informally laid out."],
        "close": ["Mostly careful, but ultimately inaccurate; the reasoning slips.",
                  "Promising and organised at first, yet flawed and incorrect in the end.",
                  "Partly sound but unreliable; the conclusion is wrong."],
        "wrong": ["Careless and incorrect; the reasoning goes astray early.",
                  "Inaccurate and poorly reasoned.",
                  "Confused and wrong from the start."],
        "none": ["Incomplete and unfocused; it never reaches a clear conclusion.",
                 "Disorganised and unfinished, without a definite answer."],
    }
    USER = {
        "right": ["Great, this is exactly what I needed, thanks!", "I'm happy with this, it feels solid.",
                  "Nice, I trust this one and it was easy to follow."],
        "format": ["I think it got there, but it was kind of hard to follow.",
                   "Okay I guess, though it felt messy to read."],
        "close": ["Hmm, it started fine but I don't trust where it ended up.",
                  "I was with it for a while, then it lost me."],
        "wrong": ["This doesn't feel right to me at all.", "I'm not convinced, this seems off."],
        "none": ["I'm confused, I never got an actual answer.", "This left me hanging, no real answer."],
    }

    def __init__(self, critique_type: str = "pro"):
        if critique_type not in ("pro", "user"):
            raise ValueError(f"critique_type must be pro or user, got {critique_type!r}")
        self.critique_type = critique_type

    def __call__(self, row: dict, completion: str) -> Feedback:
        import hashlib
        import random

        from alignkit.data.chain_arith import check

        result = check(row, completion)
        steps = len(row["ops"])
        if result.correct:
            verdict, score = ("right", 10) if result.format else ("format", 6)
        elif result.first_wrong_step is None or not any(
                ANSWER_LINE.match(line) for line in completion.splitlines()):
            verdict, score = "none", 0
        else:
            share = min(result.steps_right, steps) / max(steps, 1)
            verdict, score = ("close" if share >= 0.5 else "wrong"), 1 + round(3 * share)
        rng = random.Random(hashlib.sha256(completion.encode()).hexdigest())
        summary, user = rng.choice(self.SUMMARY[verdict]), rng.choice(self.USER[verdict])
        if result.correct:
            analysis = ("Every step follows the problem's operations and the final answer matches the reference."
                        + ("" if result.format else " Some lines are not in the `a op b = c` step format."))
        elif result.first_wrong_step is not None:
            analysis = (f"The first {result.steps_right} step(s) are right; step {result.first_wrong_step + 1} leaves "
                        "the correct path (a wrong operand, operation or result, or an early or wrong answer), so "
                        "the final answer does not match the reference.")
        else:
            analysis = "The response does not reach the reference answer."
        return Feedback(score / 10, summary if self.critique_type == "pro" else user, self.name,
                        {"user": user, "analysis": analysis, "summary": summary, "correct": result.correct,
                         "format": result.format, "first_wrong_step": result.first_wrong_step})


ANSWER_LINE = re.compile(r"^\s*Answer:\s*-?\d+", re.IGNORECASE)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else repr(exc)


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return "\n".join(m["content"] for m in prompt if m.get("role") == "user")
    return str(prompt)


PROVIDERS = {"exact_answer": ExactAnswer, "format": FormatCheck, "reward_model": RewardModelScorer,
             "llm_judge": LLMJudge, "critique": Critique, "chain_critic": ChainCritic}
ENGINE_PROVIDERS = ("llm_judge", "critique")  # they ask the rollout pool for their critiques


def provider_fields(name: str, params: dict) -> list[str]:
    """The fields every prompt row must carry for provider `name` (checked before anything starts)."""
    if name == "chain_critic":
        return ["start", "ops", "answer"]
    return [params.get("answer_field", "answer")] if name in ("exact_answer", "critique") else []


def check_provider(name: str, params: dict) -> None:
    """Validate a provider name and its parameters without building it (a reward model is not loaded)."""
    import inspect

    from alignkit.errors import RecipeError

    if name not in PROVIDERS:
        raise RecipeError(f"`online.feedback`: unknown provider `{name}`; available: {', '.join(PROVIDERS)}")
    signature = inspect.signature(PROVIDERS[name].__init__)
    allowed = [p for p in signature.parameters if p not in ("self", "engine")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise RecipeError(f"`online.feedback_params`: {name} has no parameter {unknown[0]!r} (its parameters: "
                          f"{', '.join(allowed)})")
    missing = [p for p, v in signature.parameters.items() if v.default is inspect.Parameter.empty
               and p not in ("self", "engine") and p not in params]
    if missing:
        raise RecipeError(f"`online.feedback_params`: {name} needs {', '.join(missing)}")
    if name != "reward_model":  # cheap to build: its own checks of the values run now (a reward model loads weights)
        try:
            PROVIDERS[name](**({"engine": None} if name in ENGINE_PROVIDERS else {}), **params)
        except (ValueError, TypeError, re.error) as exc:
            raise RecipeError(f"`online.feedback_params` of {name}: {exc}") from None


def make_provider(name: str, params: dict, engine=None) -> Provider:
    """Provider `name` with `params`; the LLM judge asks `engine` (the rollout pool) for its critiques."""
    check_provider(name, params)
    if name in ENGINE_PROVIDERS:
        return PROVIDERS[name](engine, **params)
    return PROVIDERS[name](**params)
