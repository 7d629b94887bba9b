"""Reward-model evaluation: does the reward follow content, or a spurious attribute (length)?

For every held-out set of a suite (`evals/reward.yaml`), on pairs (x, y_w, y_l):
- `accuracy`: pairwise accuracy, P[r(y_w) > r(y_l)]; `ece` and a calibration curve of σ(r_w - r_l).
- `length_corr`: Pearson correlation of reward with response length (tokens) over all responses of the set.
- `matched_length_corr`: the same, on matched content only: each chosen response with 0, 1 and 2 filler sentences
  appended (a counterfactual edit that changes length, not content), centred per response.
- `cf_delta`: mean reward change from appending one filler sentence, in units of the set's reward std.
- `cf_flip_rate`: of the pairs ranked right, the fraction whose rejected response wins once padded with filler.
- best-of-n (`bon_*`): per prompt, candidates = {y_w, y_l} x {0, 1, 2 fillers} (6); the reward picks one.
  `bon_content` = fraction picking a version of y_w; `bon_length_drift` = tokens of the pick minus the mean of the
  candidates; `bon_padded` = fraction picking a padded candidate (1/3 ... 2/3 expected if length did not matter).

Rewards are scored exactly as in training (`models/logps.forward_rewards`). Run on any checkpoint with
`alignkit eval reward model.path=MODEL_DIR`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignkit.data.encode import EncodeSettings, collate_sft, encode_sft
from alignkit.device import host, place, place_model, work_device
from alignkit.errors import RecipeError
from alignkit.paths import shipped

log = logging.getLogger(__name__)

DEFAULT_SETTINGS = EncodeSettings()
DEFAULT_FILLERS = ("I hope this helps, and feel free to ask if anything is unclear.",
                   "Let me know if you would like more details on this topic.")


# ------------------------------------------------------------------------------------------------ pure metrics
def pairwise_accuracy(r_w: np.ndarray, r_l: np.ndarray) -> float:
    return float(np.mean(r_w > r_l))


def calibration_curve(r_w: np.ndarray, r_l: np.ndarray, bins: int = 10) -> dict:
    """Bradley-Terry probabilities σ(r_a - r_b) against outcomes, both orders of every pair (so the curve is
    symmetric and 'predicts 0.5' means a coin flip). Returns per-bin mean prediction, accuracy, count, and ECE."""
    delta = np.concatenate([r_w - r_l, r_l - r_w])
    prob = 1.0 / (1.0 + np.exp(-np.clip(delta, -60, 60)))
    outcome = np.concatenate([np.ones_like(r_w), np.zeros_like(r_l)])
    which = np.minimum((prob * bins).astype(int), bins - 1)
    curve = {"predicted": [], "observed": [], "count": []}
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            curve["predicted"].append(float(prob[inside].mean()))
            curve["observed"].append(float(outcome[inside].mean()))
            curve["count"].append(int(inside.sum()))
            ece += inside.mean() * abs(prob[inside].mean() - outcome[inside].mean())
    return {**curve, "ece": float(ece)}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def matched_length_correlation(rewards: np.ndarray, lengths: np.ndarray) -> float:
    """rewards, lengths [items, versions]: versions of one content that differ in length only. Correlation of the
    within-item deviations, so differences between items (content) do not count."""
    return pearson((rewards - rewards.mean(1, keepdims=True)).ravel(),
                   (lengths - lengths.mean(1, keepdims=True)).ravel())


def best_of_n(rewards: np.ndarray, lengths: np.ndarray, good: np.ndarray, padded: np.ndarray) -> dict:
    """rewards/lengths/good/padded [prompts, candidates]: pick the highest reward per prompt."""
    pick = rewards.argmax(1)
    rows = np.arange(len(rewards))
    return {"bon_content": float(good[rows, pick].mean()),
            "bon_length_drift": float((lengths[rows, pick] - lengths.mean(1)).mean()),
            "bon_padded": float(padded[rows, pick].mean())}


def append_filler(response, sentences: list[str]):
    """The response with filler sentences appended (a length-only edit), in the response's own format."""
    if not sentences:
        return response
    extra = " " + " ".join(sentences)
    if isinstance(response, list):
        return [*response[:-1], {**response[-1], "content": response[-1]["content"] + extra}]
    return response + extra


# ------------------------------------------------------------------------------------------------------ scoring
class RewardScorer:
    """Scores (prompt, response) pairs with a saved reward model, encoded as in training."""

    def __init__(self, model_dir: str, dtype: str = "float32", batch_size: int = 16,
                 settings: EncodeSettings = DEFAULT_SETTINGS):
        from alignkit.models.loading import load_reward_model, load_tokenizer

        self.device = work_device()  # the GPU the scoring task reserved, else the CPU
        self.tokenizer = load_tokenizer(model_dir)
        self.model = place_model(load_reward_model(model_dir, dtype, pad_token_id=self.tokenizer.pad_token_id,
                                                   on_cuda=self.device.type == "cuda").eval(), self.device)
        self.batch_size, self.settings = batch_size, settings

    def score(self, prompts: list, responses: list) -> tuple[np.ndarray, np.ndarray]:
        """Rewards and response lengths in tokens."""
        from alignkit.models.logps import forward_rewards

        encoded = [encode_sft(self.tokenizer, {"prompt": p, "completion": r}, self.settings)
                   for p, r in zip(prompts, responses)]
        for i, e in enumerate(encoded):
            e["index"] = i
        rewards = []
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                batch = place(collate_sft(encoded[start:start + self.batch_size], self.tokenizer.pad_token_id),
                              self.device)
                rewards.append(host(forward_rewards(self.model, batch["input_ids"], batch["attention_mask"])[0]))
        lengths = np.array([len(e["completion_ids"]) for e in encoded], dtype=np.float64)
        return torch.cat(rewards).numpy().astype(np.float64), lengths


def evaluate_set(scorer: RewardScorer, rows: list[dict], fillers: list[str], calibration_bins: int = 10) -> dict:
    """Every metric of the module docstring on one set of preference rows."""
    n = len(rows)
    prompts = [r["prompt"] for r in rows]
    versions = {}  # (side, fillers appended) -> responses
    for side in ("chosen", "rejected"):
        for k in range(3):
            versions[side, k] = [append_filler(r[side], fillers[:k]) for r in rows]
    keys = list(versions)
    rewards, lengths = scorer.score(prompts * len(keys), [y for key in keys for y in versions[key]])
    r = {key: rewards[i * n:(i + 1) * n] for i, key in enumerate(keys)}
    length = {key: lengths[i * n:(i + 1) * n] for i, key in enumerate(keys)}
    r_w, r_l = r["chosen", 0], r["rejected", 0]
    scale = float(np.concatenate([r_w, r_l]).std()) or 1.0
    right = r_w > r_l
    calibration = calibration_curve(r_w, r_l, calibration_bins)
    matched_r = np.stack([r["chosen", k] for k in range(3)], 1)
    matched_len = np.stack([length["chosen", k] for k in range(3)], 1)
    all_r = np.stack([r[key] for key in keys], 1)
    all_len = np.stack([length[key] for key in keys], 1)
    good = np.array([[key[0] == "chosen" for key in keys]] * n)
    padded = np.array([[key[1] > 0 for key in keys]] * n)
    return {
        "pairs": n,
        "accuracy": pairwise_accuracy(r_w, r_l),
        "ece": calibration["ece"],
        "length_corr": pearson(np.concatenate([r_w, r_l]), np.concatenate([length["chosen", 0],
                                                                            length["rejected", 0]])),
        "matched_length_corr": matched_length_correlation(matched_r, matched_len),
        "cf_delta": float(np.concatenate([r["chosen", 1] - r_w, r["rejected", 1] - r_l]).mean() / scale),
        "cf_flip_rate": float((r["rejected", 1][right] > r_w[right]).mean()) if right.any() else 0.0,
        **best_of_n(all_r, all_len, good, padded),
        "reward_mean": float(np.concatenate([r_w, r_l]).mean()), "reward_std": scale,
        "calibration": calibration,
    }


# -------------------------------------------------------------------------------------------------------- suites
@dataclass
class RewardSuite:
    """What `evals/reward.yaml` holds. `sets` maps a name to {data, split}; with no sets, the recipe's data.eval."""
    sets: dict[str, dict] = field(default_factory=dict)
    max_pairs: int = 128
    fillers: list[str] = field(default_factory=lambda: list(DEFAULT_FILLERS))
    calibration_bins: int = 10


def load_suite(path: str | None, key: str = "eval.suite") -> RewardSuite:
    """The suite file `path` (named by `key`, for the error message), validated."""
    if path is None:
        return RewardSuite()
    from omegaconf import OmegaConf

    path = str(shipped(path, "evals"))  # a file, or a shipped suite (evals/reward.yaml) from any directory
    if not Path(path).is_file():
        raise RecipeError(f"evaluation suite {path} does not exist ({key})")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    except Exception as exc:  # YAML errors carry their line
        raise RecipeError(f"cannot parse {path}: {exc}".replace("\n", " ")) from None
    allowed = {"sets", "max_pairs", "fillers", "calibration_bins"}
    unknown = set(raw) - allowed
    if unknown:
        raise RecipeError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    suite = RewardSuite(**raw)
    for name, spec in suite.sets.items():
        if not isinstance(spec, dict) or "data" not in spec:
            raise RecipeError(f"{path}: set `{name}` needs `data` (and optionally `split`)")
    if len(suite.fillers) < 2:
        raise RecipeError(f"{path}: `fillers` needs at least 2 sentences (the edits append 1 and 2)")
    return suite


def load_sets(suite: RewardSuite, default_data: str | None = None, default_split: str = "test",
              seed: int = 0) -> dict[str, list[dict]]:
    """The rows of every set of the suite (the recipe's data.eval when the suite names none)."""
    from alignkit.kinds import load_records

    sets = suite.sets or ({"held_out": {"data": default_data, "split": default_split}} if default_data else {})
    if not sets:
        raise RecipeError("nothing to evaluate: the suite has no `sets` and the recipe no data.eval")
    return {name: load_records(spec["data"], spec.get("split", default_split), "reward_pairs", seed=seed,
                               limit=suite.max_pairs).rows for name, spec in sets.items()}


def score_sets(model_dir: str, sets: dict[str, list[dict]], suite: RewardSuite, *,
               settings: EncodeSettings = DEFAULT_SETTINGS, dtype: str = "float32", batch_size: int = 16,
               threads: int | None = None) -> dict:
    """Evaluate one reward model on every set; returns {set name: metrics}."""
    if threads:
        torch.set_num_threads(threads)
    scorer = RewardScorer(model_dir, dtype, batch_size, settings)
    results = {}
    for name, rows in sets.items():
        start = time.perf_counter()
        results[name] = evaluate_set(scorer, rows, suite.fillers, suite.calibration_bins)
        log.info("reward eval `%s`: %d pairs, accuracy %.3f, cf_delta %.2f, bon_length_drift %.1f (%.1f s)", name,
                 len(rows), results[name]["accuracy"], results[name]["cf_delta"],
                 results[name]["bon_length_drift"], time.perf_counter() - start)
    return results


def run_suite(model_dir: str, suite: RewardSuite, **kwargs) -> dict:
    return score_sets(model_dir, load_sets(suite), suite, **kwargs)


SUMMARY_KEYS = ("accuracy", "ece", "length_corr", "matched_length_corr", "cf_delta", "cf_flip_rate", "bon_content",
                "bon_length_drift", "bon_padded")


def results_table(results: dict[str, dict]) -> str:
    """A Markdown table: one row per set, one column per metric."""
    lines = ["| set | pairs | " + " | ".join(SUMMARY_KEYS) + " |", "|---" * (len(SUMMARY_KEYS) + 2) + "|"]
    for name, m in results.items():
        lines.append(f"| {name} | {m['pairs']} | " + " | ".join(f"{m[k]:.3f}" for k in SUMMARY_KEYS) + " |")
    return "\n".join(lines)


def calibration_plot(results: dict[str, dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    for name, m in results.items():
        c = m["calibration"]
        ax.plot(c["predicted"], c["observed"], marker="o", label=f"{name} (ECE {c['ece']:.3f})")
    ax.set_xlabel("predicted P(a preferred) = σ(r_a - r_b)")
    ax.set_ylabel("observed frequency")
    ax.set_title("reward calibration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
