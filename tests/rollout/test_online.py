"""The online loop for two rounds end to end on CPU (tiny-llama, HF engine actors, Ray Train worker), and resuming
after a failure in round 1 from round 0's model."""
import json

import pytest

from alignkit.config import recipe_from_dict
from alignkit.data.builtin import BUILTIN_DATASETS
from alignkit.rollout.feedback import ExactAnswer, Provider
from alignkit.rollout.online import OnlineSettings, run_online, sft_on_accepted, unpaired_by_score
from alignkit.rollout.types import SamplingParams


def _recipe(tmp_path, objective="sft"):
    return recipe_from_dict({
        "run": {"name": "online_test", "output_dir": str(tmp_path / "unused")},
        "model": {"path": "builtin:tiny-llama"},
        "data": {"train": "builtin:concise_arithmetic", "max_length": 96, "max_prompt_length": 64},
        "objective": {"name": objective}, "optim": {"lr": 1e-3},
        "trainer": {"backend": "torch", "max_steps": 1, "micro_batch_size": 4, "progress_bar": False},
        "cluster": {"num_workers": 1, "cpus_per_worker": 1},
        "rollout": {"backend": "hf", "num_engines": 1, "cpus_per_engine": 0.5, "threads": 1},
        "eval": {"generate": False}})


ROWS = BUILTIN_DATASETS["concise_arithmetic"][0]("train", seed=0)[:16]
SETTINGS = OnlineSettings(rounds=2, prompts_per_round=4, steps_per_round=2,
                          sampling=SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=1))


class FailOnce(Provider):
    """Fails the first time it is asked in round 1 (its third batch call: round 0 is one call)."""

    def __init__(self):
        self.calls, self.inner = 0, ExactAnswer()

    def batch(self, rows, completions):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("scorer crashed")
        return [type(f)(0.5, f.text, f.source) for f in self.inner.batch(rows, completions)]


@pytest.mark.slow  # ~70 s alone (two Ray Train stages and two engine pools): keeps the default run under 10 minutes
def test_two_rounds_then_resume_after_a_crash(tmp_path):
    out = tmp_path / "loop"
    with pytest.raises(RuntimeError, match="scorer crashed"):
        run_online(_recipe(tmp_path), ROWS, FailOnce(), sft_on_accepted(min_score=0.0), SETTINGS, out)
    first = json.loads((out / "round_0" / "done.json").read_text())
    assert not (out / "round_1" / "done.json").exists()
    assert first["completions"] == 8 and first["train_rows"] == 8 and first["sync_s"] < 60
    assert (out / "round_0" / "train" / "final" / "config.json").exists()

    results = run_online(_recipe(tmp_path), ROWS, FailOnce(), sft_on_accepted(min_score=0.0), SETTINGS, out)
    assert [r["round"] for r in results] == [0, 1]
    assert results[0] == first  # round 0 was not redone
    assert results[1]["model"].endswith("round_1/train/final")
    train_recipe = (out / "round_1" / "train" / "recipe.yaml").read_text()
    assert "round_0/train/final" in train_recipe  # round 1 trained on from round 0's model
    rollouts = [json.loads(x) for x in (out / "round_1" / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 8 and all(r["score"] == 0.5 for r in rollouts)


def test_unpaired_rows_and_empty_rounds(tmp_path):
    from alignkit.rollout.feedback import Feedback
    from alignkit.rollout.types import Completion

    rows = [{"prompt": [{"role": "user", "content": "1+1?"}]}, {"prompt": "2+2?"}]
    comps = [Completion(0, 0, "2", [], [], "stop"), Completion(1, 0, "5", [], [], "stop"),
             Completion(1, 1, "?", [], [], "stop")]
    fb = [Feedback(1.0, "", "x"), Feedback(0.0, "", "x"), Feedback(None, "words only", "x")]
    built = unpaired_by_score(0.5)(rows, comps, fb)
    assert [r["label"] for r in built] == [True, False]
    assert built[0]["completion"] == [{"role": "assistant", "content": "2"}] and built[1]["completion"] == "5"
    assert sft_on_accepted(1.0)(rows, comps, fb) == [{"prompt": rows[0]["prompt"],
                                                      "completion": [{"role": "assistant", "content": "2"}]}]


def test_colocated_engines_sleep_while_training_and_the_trainer_pushes(tmp_path, monkeypatch):
    """rollout.colocate on GPU: engines sleep before each round's training, wake before the push, and rank 0 of the
    training stage pushes the weights (the pool and the training stage are stand-ins: no GPU here)."""
    from dataclasses import dataclass, field

    import alignkit.pipelines.preference as preference
    import alignkit.rollout.engine as engine
    from alignkit.pipelines.preference import TrainedRun
    from alignkit.rollout.feedback import Feedback
    from alignkit.rollout.types import Completion

    calls = []

    @dataclass
    class Sink:
        device: str = "cuda"
        wake_first: bool = False
        actors: list = field(default_factory=list)

    class Pool:
        def __init__(self, *args, **kwargs):
            self.collective = Sink()

        def generate(self, prompts, sampling):
            calls.append("generate")
            return [Completion(i, 0, "4", [1], [-0.1], "stop") for i in range(len(prompts))]

        def sleep(self):
            calls.append("sleep")

        def wake(self):
            calls.append("wake")

        def update_weights(self, weights):
            raise AssertionError("the trainer pushes; the driver does not")

        def shutdown(self):
            calls.append("shutdown")

    def train_stage(recipe, weight_sink=None):
        assert weight_sink is not None and weight_sink.wake_first  # the push wakes the engines first
        calls.append("train+push")
        out = tmp_path / "loop" / recipe.run.name
        out.mkdir(parents=True)
        (out / "weight_sync.json").write_text('{"seconds": 0.25, "version": 1}')
        return TrainedRun(out, "", {}, 0.0, 0.0)

    class Always(Provider):
        def batch(self, rows, completions):
            return [Feedback(1.0, "", "test") for _ in completions]

    monkeypatch.setattr(engine, "RolloutPool", Pool)
    monkeypatch.setattr(preference, "train_stage", train_stage)
    from alignkit.config.loader import recipe_to_dict

    raw = recipe_to_dict(_recipe(tmp_path))
    raw["rollout"].update(backend="vllm", gpus_per_engine=0.5, colocate=True)
    raw["cluster"].update(use_gpu=True)
    results = run_online(recipe_from_dict(raw), ROWS, Always(), sft_on_accepted(1.0), SETTINGS, tmp_path / "loop")
    assert calls == ["generate", "sleep", "train+push"] * 2 + ["shutdown"]
    assert [r["sync_via"] for r in results] == ["trainer rank 0"] * 2 and results[0]["sync_s"] == 0.25
