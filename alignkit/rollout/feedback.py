"""Feedback and verifier providers: each turns (prompt row, completion text) into a `Feedback` record — a score (or
None when the provider only gives words), verbal feedback, and details. Rule-based verifiers are exact and free;
the reward-model scorer uses a trained RM; the LLM judge asks a rollout engine for a critique and parses a score.

    provider = ExactAnswer()                  # rows carry `answer` (the reference final answer)
    records = provider.batch(rows, texts)     # [Feedback]
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from alignkit.rollout.types import SamplingParams

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


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return "\n".join(m["content"] for m in prompt if m.get("role") == "user")
    return str(prompt)


PROVIDERS = {"exact_answer": ExactAnswer, "format": FormatCheck, "reward_model": RewardModelScorer,
             "llm_judge": LLMJudge}


def provider_fields(name: str, params: dict) -> list[str]:
    """The fields every prompt row must carry for provider `name` (checked before anything starts)."""
    return [params.get("answer_field", "answer")] if name == "exact_answer" else []


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


def make_provider(name: str, params: dict, engine=None) -> Provider:
    """Provider `name` with `params`; the LLM judge asks `engine` (the rollout pool) for its critiques."""
    check_provider(name, params)
    if name == "llm_judge":
        return LLMJudge(engine, **params)
    return PROVIDERS[name](**params)
