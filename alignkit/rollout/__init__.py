"""Rollouts: generation engines (vLLM or Hugging Face `generate`) behind one interface, as Ray actors, with weight
sync from the trainer, and feedback / verifier providers that score or critique what they generate.

    engine.generate(prompts, SamplingParams(n=4, temperature=0.8, max_tokens=64)) -> [Completion]
    engine.score(prompts, completions) -> per-token log-probs of fixed completions (as the trainer computes them)
    engine.update_weights(state_dict) -> new weights version

See README "Rollouts".
"""
from alignkit.rollout.types import Completion, SamplingParams

__all__ = ["Completion", "SamplingParams"]
