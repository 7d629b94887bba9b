"""Verifiers and feedback providers: answer extraction, exact-answer and format verdicts with their verbal feedback,
the LLM judge's score parsing (with a scripted engine) and on a real engine, and the reward-model scorer."""
import pytest

from alignkit.rollout.feedback import ExactAnswer, FormatCheck, LLMJudge, RewardModelScorer, final_number
from alignkit.rollout.types import Completion


@pytest.mark.parametrize("text, want", [
    ("2 + 3 = 5", "5"), ("The answer is 1,234.", "1234"), ("#### -7", "-7"), ("so 12 apples, answer: 7.0", "7"),
    ("first 3 then 4.5", "4.5"), ("no digits here", None), ("answer is 3 but then 9", "3")])
def test_final_number(text, want):
    assert final_number(text) == want


def test_exact_answer_and_format():
    v = ExactAnswer()
    row = {"prompt": "What is 2 + 3?", "answer": "5"}
    assert v(row, "It is 5.").score == 1.0
    wrong = v(row, "It is 6.")
    assert wrong.score == 0.0 and "correct answer is 5" in wrong.text and wrong.details == {"expected": "5", "got": "6"}
    assert v(row, "I am not sure.").score == 0.0
    with pytest.raises(KeyError, match="reference answer"):
        v({"prompt": "x"}, "1")
    f = FormatCheck(r"####\s*-?\d+\s*$", "'#### <number>' at the end", max_words=5)
    assert f(row, "#### 5").score == 1.0
    bad = f(row, "the result is five and more words here")
    assert bad.score == 0.0 and "'#### <number>'" in bad.text and "at most 5" in bad.text
    assert [x.score for x in v.batch([row, row], ["5", "4"])] == [1.0, 0.0]


class ScriptedEngine:
    def __init__(self, replies):
        self.replies, self.prompts = replies, []

    def generate(self, prompts, sampling):
        self.prompts += prompts
        assert sampling.temperature == 0.0
        return [Completion(i, 0, r, [], [], "stop") for i, r in enumerate(self.replies)]


def test_llm_judge_parses_scores_and_keeps_the_critique():
    engine = ScriptedEngine(["Clear and correct.\nScore: 8", "Wrong arithmetic. score = 15", "No idea."])
    judge = LLMJudge(engine)
    rows = [{"prompt": [{"role": "user", "content": "What is 2 + 3?"}]}] * 3
    out = judge.batch(rows, ["5", "6", "?"])
    assert [f.score for f in out] == [0.8, 1.0, None]  # scaled to [0, 1], clipped; unparsable -> None
    assert out[0].text == "Clear and correct." and out[2].details["parsed"] is False
    assert "What is 2 + 3?" in engine.prompts[0][0]["content"] and "Response:\n5" in engine.prompts[0][0]["content"]
    with pytest.raises(ValueError, match="must contain"):
        LLMJudge(engine, template="no placeholders")


def test_llm_judge_on_a_real_engine(tiny_model_dir):
    from alignkit.rollout.hf import HFEngine

    judge = LLMJudge(HFEngine(str(tiny_model_dir)), max_tokens=6)
    out = judge.batch([{"prompt": "What is 2 + 3?"}], ["5"])
    assert out[0].source == "llm_judge" and isinstance(out[0].details["raw"], str)


def test_reward_model_scorer(tmp_path, tiny_model_dir):
    from alignkit.models.loading import load_reward_model, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    load_reward_model(str(tiny_model_dir), pad_token_id=tok.pad_token_id).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    scorer = RewardModelScorer(str(tmp_path))
    rows = [{"prompt": [{"role": "user", "content": "Hi"}]}, {"prompt": "Plain prompt"}]
    out = scorer.batch(rows, ["Hello!", "A reply."])
    assert all(isinstance(f.score, float) for f in out) and out[0].score != out[1].score
