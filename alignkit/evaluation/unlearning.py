"""Does forgetting hold? The unlearning evaluation suite on one model, from the sets of a forget/retain benchmark
(TOFU-style QA with paraphrased and perturbed answers, raw-text biographies, never-seen holdout items).

Per model (`evaluate_model`):
- `forget/prob`, `retain/prob`: mean P̃(answer | question) = exp(-NLL/|answer|).
- `forget/rouge`, `retain/rouge`: ROUGE-L recall (stemmed) of greedy answers vs the answer (TOFU).
- `forget/truth_ratio` = mean min(R, 1/R), `retain/truth_ratio` = mean max(0, 1 - R), R = P̃(perturbed) / P̃(paraphrase).
- `utility`: harmonic mean of retain prob, ROUGE and truth ratio (TOFU's model utility restricted to the retain set;
  the built-in benchmark has no real-authors / world-facts sets).
- `forget/fact`, `retain/fact` (when items carry a `fact` value, as the built-in benchmark's do): share of greedy
  answers that state the value; alignkit's addition, because ROUGE of template answers ("X was born in Y.") stays
  high for a model that never saw the fact.
- `forget/knowmem`: ROUGE-L F1 (unstemmed) of greedy answers (MUSE KnowMem); `verbmem`: ROUGE-L F1 of the greedy
  continuation of the first half of each forget biography vs its second half (MUSE VerbMem).
- `mia/<attack>`: ROC AUC of LOSS, zlib, Min-40% and Min-40%++ scores of answer tokens separating forget items
  (members of the target's training data) from holdout items (never seen); 0.5 = indistinguishable.
Against the retain model (`compare_to_retain`): `forget_quality` (KS p-value of forget truth ratios) and `privleak`
(MUSE, from Min-40% on forget vs holdout answers).
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignkit.data.encode import EncodeSettings, collate_sft, render_prompt
from alignkit.device import host, place, place_model, work_device
from alignkit.evaluation import unlearning_metrics as um
from alignkit.kinds.forget import encode as encode_forget
from alignkit.paths import shipped

log = logging.getLogger(__name__)


PROBE_SETTINGS = EncodeSettings(256, 128)
SUITE_VERSION = 2  # bump when a metric changes: cached evaluations of learn-stage models are keyed by it


class ModelProbe:
    """Log-probabilities and greedy generations of one in-memory causal LM, encoded as in training."""

    def __init__(self, model, tokenizer, batch_size: int = 16, settings: EncodeSettings = PROBE_SETTINGS,
                 share_prompts: bool = True):
        self.device = work_device()  # the GPU the evaluation task reserved, else the CPU
        self.model, self.tokenizer = place_model(model.eval(), self.device), tokenizer
        self.batch_size, self.settings, self.share_prompts = batch_size, settings, share_prompts

    def _token_stats(self, rows: list[dict], vocab: bool = False) -> list[dict]:
        """Per row: answer-token log-probs (and μ, σ of the next-token distributions for Min-K%++)."""
        return self._encoded_stats([encode_forget(self.tokenizer, row, self.settings) for row in rows], vocab)

    def _encoded_stats(self, encoded: list[dict], vocab: bool = False) -> list[dict]:
        """Per encoded row: `token_logps` of its completion tokens (+ `mu`, `sigma` with `vocab`), in input order.
        Rows with the same prompt share one prompt pass (`shared_prompt_token_logps`) when the model allows it."""
        from alignkit.models.logps import supports_label_only_head

        out: list[dict | None] = [None] * len(encoded)
        by_prompt: dict[tuple, list[int]] = {}
        plain = []
        share = self.share_prompts and supports_label_only_head(self.model)
        for i, e in enumerate(encoded):
            if share and e["prompt_ids"]:
                by_prompt.setdefault(tuple(e["prompt_ids"]), []).append(i)
            else:
                plain.append(i)
        with torch.no_grad():
            for batch in self._prompt_batches(list(by_prompt.items())):
                self._shared_batch(encoded, batch, vocab, out)
            for start in range(0, len(plain), self.batch_size):
                self._plain_batch(encoded, plain[start:start + self.batch_size], vocab, out)
        return out

    def _prompt_batches(self, groups: list[tuple[tuple, list[int]]]):
        """[(prompt ids, row indices)] per forward, at most `batch_size` completions each (a larger group is split)."""
        batch, size = [], 0
        for prompt, rows in groups:
            for start in range(0, len(rows), self.batch_size):
                part = rows[start:start + self.batch_size]
                if batch and size + len(part) > self.batch_size:
                    yield batch
                    batch, size = [], 0
                batch.append((prompt, part))
                size += len(part)
        if batch:
            yield batch

    def _shared_batch(self, encoded, batch, vocab: bool, out: list) -> None:
        from alignkit.models.logps import shared_prompt_token_logps

        rows = [i for _, part in batch for i in part]
        result = shared_prompt_token_logps(self.model, [list(p) for p, _ in batch],
                                           [encoded[i]["completion_ids"] for i in rows],
                                           [g for g, (_, part) in enumerate(batch) for _ in part],
                                           self.tokenizer.pad_token_id, return_vocab=vocab)
        self._collect(rows, result, vocab, out)

    def _plain_batch(self, encoded, rows: list[int], vocab: bool, out: list) -> None:
        from alignkit.models.logps import forward_token_logps

        batch = place(collate_sft([{**encoded[i], "index": i} for i in rows], self.tokenizer.pad_token_id),
                      self.device)
        self._collect(rows, forward_token_logps(self.model, batch["input_ids"], batch["attention_mask"],
                                                batch["labels"], return_vocab=vocab), vocab, out)

    @staticmethod
    def _collect(rows: list[int], result, vocab: bool, out: list) -> None:
        lp, mask = host(result[0]), host(result[1])
        vocab_logps = host(result[2]) if vocab else None
        offsets = mask.sum(-1).cumsum(0).tolist()
        for b, i in enumerate(rows):
            item = {"token_logps": lp[b][mask[b]].double().numpy()}
            if vocab:
                item["mu"], item["sigma"] = um.token_distribution_stats(
                    vocab_logps[(offsets[b - 1] if b else 0):offsets[b]])
            out[i] = item

    def qa_row(self, question: str, answer: str) -> dict:
        """A QA item as the model reads it: chat turns, or for a tokenizer without a chat template (MUSE's base
        models) the plain "Question: ... Answer: ..." format the MUSE/open-unlearning evaluations use."""
        if getattr(self.tokenizer, "chat_template", None):
            return {"prompt": [{"role": "user", "content": question}],
                    "completion": [{"role": "assistant", "content": answer}]}
        return {"prompt": f"Question: {question}\nAnswer:", "completion": f" {answer}"}

    def avg_nll(self, questions: list[str], answers: list[str]) -> np.ndarray:
        rows = [self.qa_row(q, a) for q, a in zip(questions, answers)]
        return np.array([-s["token_logps"].mean() for s in self._token_stats(rows)])

    def sequence_logps(self, prompts: list, completions: list) -> np.ndarray:
        """Summed log-probs of each completion given its prompt (chat-templated when the prompt is a message list)."""
        rows = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
        return np.array([s["token_logps"].sum() for s in self._token_stats(rows)])

    def answer_stats(self, items: list[dict]) -> list[dict]:
        """Token stats of QA answers given their questions, or of raw texts (items with `text`: every token)."""
        rows = [{"prompt": "", "completion": r["text"], "raw_text": True} if "question" not in r else
                self.qa_row(r["question"], r["answer"]) for r in items]
        return self._token_stats(rows, vocab=True)

    def generate(self, prompts: list, max_new_tokens: int = 48) -> list[str]:
        """Greedy answers to chat prompts (message lists) or continuations of raw strings."""
        return self.continue_texts([render_prompt(self.tokenizer, p) for p in prompts], max_new_tokens)

    def continue_texts(self, texts: list[str], max_new_tokens: int) -> list[str]:
        tok = self.tokenizer
        side, tok.padding_side = tok.padding_side, "left"
        outs = []
        try:
            for i in range(0, len(texts), self.batch_size):
                enc = place(dict(tok(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                     add_special_tokens=False)), self.device)
                with torch.no_grad():
                    out = host(self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                                   pad_token_id=tok.pad_token_id))
                outs += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        finally:
            tok.padding_side = side
        return [t.strip() for t in outs]


def _qa_metrics(probe: ModelProbe, items: list[dict], split: str, max_new_tokens: int) -> tuple[dict, dict, list]:
    """Metrics of one QA split, per-item details, and the answers' token stats (with μ, σ: membership inference
    reuses them). Answer, paraphrase and perturbed answers of a question go through one pass: they share its prompt."""
    questions = [r["question"] for r in items]
    n_pert = min((len(r.get("perturbed_answer") or []) for r in items), default=0)  # MUSE's QA has none
    rows = [probe.qa_row(q, r["answer"]) for q, r in zip(questions, items)]
    if n_pert:
        rows += [probe.qa_row(q, r.get("paraphrased_answer") or r["answer"]) for q, r in zip(questions, items)]
        rows += [probe.qa_row(q, a) for q, r in zip(questions, items) for a in r["perturbed_answer"][:n_pert]]
    stats = probe._token_stats(rows, vocab=True)
    nll = np.array([-s["token_logps"].mean() for s in stats])
    n = len(items)
    answers = probe.generate([probe.qa_row(q, "")["prompt"] for q in questions], max_new_tokens)
    metrics = {
        f"{split}/prob": float(um.normalized_probability(nll[:n]).mean()),
        f"{split}/rouge": float(np.mean([um.rouge_l(r["answer"], a) for r, a in zip(items, answers)])),
        f"{split}/knowmem": float(np.mean([um.rouge_l(r["answer"], a, "f1", stemmer=False)
                                           for r, a in zip(items, answers)])),
    }
    details = {f"{split}/generations": answers}
    if n_pert:  # TOFU-style items
        ratios = um.truth_ratio(nll[n:2 * n], nll[2 * n:].reshape(n, n_pert))
        metrics[f"{split}/truth_ratio"] = um.truth_ratio_metric(ratios, "forget" if split == "forget" else "retain")
        details[f"{split}/truth_ratios"] = ratios.tolist()
    if all("fact" in r for r in items):
        metrics[f"{split}/fact"] = float(np.mean([um.fact_recalled(str(r["fact"]), a) for r, a in zip(items, answers)]))
    return metrics, details, stats[:n]


def _verbmem(probe: ModelProbe, items: list[dict], max_new_tokens: int) -> float:
    """ROUGE-L F1 of greedy continuations: of each text's first half vs its second half, or of MUSE's `prompt`
    vs its ground truth `gt`."""
    tok = probe.tokenizer
    prompts, targets = [], []
    for item in items:
        if "gt" in item:
            prompts.append(item["prompt"])
            targets.append(item["gt"])
            continue
        ids = tok(item["text"], add_special_tokens=False)["input_ids"]
        half = len(ids) // 2
        prompts.append(tok.decode(ids[:half]))
        targets.append(tok.decode(ids[half:]))
    outs = probe.continue_texts(prompts, max_new_tokens)  # raw text: no chat template
    return float(np.mean([um.rouge_l(t, o, "f1", stemmer=False) for t, o in zip(targets, outs)]))


def _mia(forget_stats: list[dict], holdout_stats: list[dict], forget_items: list[dict],
         holdout_items: list[dict]) -> tuple[dict, dict]:
    def scores(stats, items):
        return {"loss": [um.loss_score(s["token_logps"]) for s in stats],
                "zlib": [um.zlib_score(s["token_logps"], r.get("answer", r.get("text"))) for s, r in zip(stats, items)],
                "mink": [um.min_k(s["token_logps"], 0.4) for s in stats],
                "minkpp": [um.min_k_plus_plus(s["token_logps"], s["mu"], s["sigma"], 0.4) for s in stats]}

    members, non_members = scores(forget_stats, forget_items), scores(holdout_stats, holdout_items)
    metrics = {f"mia/{k}": um.roc_auc(np.array(members[k]), np.array(non_members[k])) for k in members}
    return metrics, {"mink/forget": members["mink"], "mink/holdout": non_members["mink"]}


def evaluate_model(model, tokenizer, sets: dict[str, list[dict]], *, max_new_tokens: int = 32,
                   batch_size: int = 16, share_prompts: bool = True) -> tuple[dict, dict]:
    """Metrics (module docstring) and the per-item values that comparisons need. `sets`: forget, retain, holdout
    (QA items) and optionally forget_text (biographies). `share_prompts=False` scores every (question, answer) in
    full instead of reusing the question's KV cache: same values, for checking."""
    start = time.perf_counter()
    probe = ModelProbe(model, tokenizer, batch_size, share_prompts=share_prompts)
    metrics, details, answer_stats = {}, {}, {}
    for split in ("forget", "retain"):
        if sets.get(split):
            m, d, answer_stats[split] = _qa_metrics(probe, sets[split], split, max_new_tokens)
            metrics.update(m)
            details.update(d)
    if sets.get("retain"):
        metrics["utility"] = um.model_utility([metrics[k] for k in ("retain/prob", "retain/rouge",
                                                                    "retain/truth_ratio") if k in metrics])
    if sets.get("forget_text"):
        metrics["verbmem"] = _verbmem(probe, sets["forget_text"], max_new_tokens)
    if sets.get("holdout") and (sets.get("members") or sets.get("forget")):
        members = sets.get("members") or sets["forget"]  # same format as the holdout set (QA or raw text)
        member_stats = answer_stats["forget"] if members is sets.get("forget") else probe.answer_stats(members)
        m, d = _mia(member_stats, probe.answer_stats(sets["holdout"]), members, sets["holdout"])
        metrics.update(m)
        details.update(d)
    for name, items in (sets.get("multiple_choice") or {}).items():
        metrics[f"mc/{name}"] = multiple_choice_accuracy(probe, items)
    log.info("unlearning eval in %.1f s: %s", time.perf_counter() - start,
             {k: round(v, 3) for k, v in metrics.items()})
    return metrics, details


def multiple_choice_accuracy(probe: ModelProbe, items: list[dict], normalize: bool = False) -> float:
    """Accuracy of picking the choice with the highest log-likelihood given the question (how WMDP and MMLU are
    scored by log-likelihood harnesses). items: {question, choices: [str], answer: index of the right choice}.
    The prompt is the question followed by "Answer:"; each choice is scored as " <choice>" (summed log-prob, or per
    token with `normalize`)."""
    prompts, completions = [], []
    for item in items:
        for choice in item["choices"]:
            prompts.append(f"{item['question'].strip()}\nAnswer:")
            completions.append(f" {choice}")
    tok = probe.tokenizer
    # no EOS after the choice (unlike training data): only the choice's own tokens are scored
    stats = probe._encoded_stats([{"prompt_ids": tok(p, add_special_tokens=False)["input_ids"],
                                   "completion_ids": tok(c, add_special_tokens=False)["input_ids"]}
                                  for p, c in zip(prompts, completions)])
    scores = [s["token_logps"].mean() if normalize else s["token_logps"].sum() for s in stats]
    right, k = 0, 0
    for item in items:
        n = len(item["choices"])
        right += int(np.argmax(scores[k:k + n]) == int(item["answer"]))
        k += n
    return right / max(1, len(items))


def compare_to_retain(details: dict, retain_details: dict) -> dict:
    """Forget quality and PrivLeak of a model against the retain (never saw the forget set) model."""
    out = {}
    if "forget/truth_ratios" in details and "forget/truth_ratios" in retain_details:
        out["forget_quality"] = um.forget_quality(np.array(details["forget/truth_ratios"]),
                                                  np.array(retain_details["forget/truth_ratios"]))
    if "mink/forget" in details and "mink/forget" in retain_details:
        auc_retain, _ = um.privleak(np.array(retain_details["mink/forget"]),
                                    np.array(retain_details["mink/holdout"]), 1.0)
        _, leak = um.privleak(np.array(details["mink/forget"]), np.array(details["mink/holdout"]),
                              max(auc_retain, 1e-6))
        out["privleak"] = leak
    return out


def quantize_weights_(model, bits: int) -> None:
    """Round every linear layer's weight to `bits`-bit integers in place (symmetric, per output channel,
    round-to-nearest), the quantisation attack's 'int8 / int4 RTN'. Embeddings and norms stay full precision."""
    levels = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight
                scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels
                w.copy_((w / scale).round().clamp(-levels, levels) * scale)


# -------------------------------------------------------------------------------------------------------- suites
SET_ROLES = ("forget", "retain", "holdout", "forget_text", "members")


@dataclass
class UnlearningSuite:
    """What `evals/unlearning*.yaml` holds. `sets` maps a role to {data, split, hub_config?, kind?}: forget and retain
    (QA items; TOFU's perturbed answers add the truth ratio and forget quality), holdout (never-trained items of the
    members' format, for membership inference), members (the MIA member set; default: forget), forget_text (texts
    or MUSE {prompt, gt} rows for VerbMem); any other name with `kind: multiple_choice` is a {question, choices,
    answer} set scored as `mc/<name>` (WMDP, MMLU)."""
    sets: dict[str, dict] = field(default_factory=dict)
    max_items: int = 60  # per set; a larger multiple-choice set is sampled across its subjects (capped_indices)
    max_new_tokens: int = 32
    batch_size: int = 16


def load_suite(path: str, key: str = "eval.suite") -> UnlearningSuite:
    """The suite file `path` (named by `key`, for the error message), validated."""
    from omegaconf import OmegaConf

    from alignkit.errors import RecipeError

    path = str(shipped(path, "evals"))  # a file, or a shipped suite (evals/reward.yaml) from any directory
    if not Path(path).is_file():
        raise RecipeError(f"evaluation suite {path} does not exist ({key})")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    except Exception as exc:  # YAML errors carry their line
        raise RecipeError(f"cannot parse {path}: {exc}".replace("\n", " ")) from None
    allowed = {f.name for f in dataclasses.fields(UnlearningSuite)}
    if set(raw) - allowed:
        raise RecipeError(f"{path}: unknown key(s) {sorted(set(raw) - allowed)}; allowed: {sorted(allowed)}")
    suite = UnlearningSuite(**raw)
    for name, spec in suite.sets.items():
        if not isinstance(spec, dict) or "data" not in spec:
            raise RecipeError(f"{path}: set `{name}` needs `data` (and `split`)")
        if spec.get("kind", "qa") not in ("qa", "multiple_choice"):
            raise RecipeError(f"{path}: set `{name}`: kind must be qa or multiple_choice")
        if name not in SET_ROLES and spec.get("kind") != "multiple_choice":
            raise RecipeError(f"{path}: set `{name}` is not one of {SET_ROLES}; a multiple-choice set needs "
                              "`kind: multiple_choice`")
    if not suite.sets:
        raise RecipeError(f"{path}: the suite has no `sets`")
    return suite


def read_suite_sets(suite: UnlearningSuite, seed: int = 0) -> dict:
    """The rows of every set of a suite, validated (a wrong schema fails here, naming the set and the field)."""
    from alignkit.data.sources import read_rows
    from alignkit.errors import DataError
    from alignkit.kinds import load_records

    sets: dict = {"multiple_choice": {}}
    for name, spec in suite.sets.items():
        split, config = spec.get("split", "train"), spec.get("hub_config")
        if spec.get("kind") == "multiple_choice":
            rows, origin = read_rows(spec["data"], split, seed, config)
            sets["multiple_choice"][name] = [_check_choice_row(rows[i], f"{origin} row {i}") for i in
                                             capped_indices(rows, suite.max_items, seed)]
        elif name == "forget_text":
            rows, origin = read_rows(spec["data"], split, seed, config)
            for i, r in enumerate(rows[:suite.max_items]):
                if not (isinstance(r, dict) and (isinstance(r.get("text"), str) or
                                                 isinstance(r.get("prompt"), str) and isinstance(r.get("gt"), str))):
                    raise DataError(f"{origin} row {i}: a forget_text row needs `text`, or `prompt` + `gt` (MUSE)")
            sets[name] = rows[:suite.max_items]
        else:
            sets[name] = load_records(spec["data"], split, "forget", seed=seed, hub_config=config,
                                      limit=suite.max_items).rows
    for role in ("forget", "retain"):
        if role in sets and "question" not in sets[role][0]:
            raise DataError(f"the `{role}` set needs QA items (`question`, `answer`), or `kind: multiple_choice`")
    return sets


def capped_indices(rows: list, max_items: int, seed: int = 0) -> list[int]:
    """Which rows a capped multiple-choice set scores, in source order: all when they fit; else, when rows carry a
    `subject` (MMLU is ordered by subject, so its first rows are one subject), an equal share of every subject
    (seeded, round-robin over subjects; a subject with fewer rows gives its share to the others); else a seeded
    uniform sample."""
    if len(rows) <= max_items:
        return list(range(len(rows)))
    rng = random.Random(seed)
    subjects = [r.get("subject") if isinstance(r, dict) else None for r in rows]
    if any(s is None for s in subjects):
        return sorted(rng.sample(range(len(rows)), max_items))
    groups: dict = {}
    for i, subject in enumerate(subjects):
        groups.setdefault(subject, []).append(i)
    queues = [rng.sample(members, len(members)) for _, members in sorted(groups.items(), key=lambda kv: str(kv[0]))]
    picked: list[int] = []
    while len(picked) < max_items:
        for queue in queues:
            if queue and len(picked) < max_items:
                picked.append(queue.pop())
    return sorted(picked)


def _check_choice_row(row, where: str) -> dict:
    from alignkit.errors import DataError

    if not isinstance(row, dict) or not isinstance(row.get("question"), str):
        raise DataError(f"{where}: a multiple-choice row needs `question`, `choices` and `answer`")
    choices, answer = row.get("choices"), row.get("answer")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: `choices` must be a list of at least 2 strings")
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise DataError(f"{where}: `answer` must be the index of the right choice (0..{len(choices) - 1})")
    return row


def evaluate_paths(models: dict[str, str], sets: dict, *, retain: str | None = None, dtype: str = "float32",
                   max_new_tokens: int = 32, batch_size: int = 16) -> dict[str, dict]:
    """The suite on saved models ({row name: path}); with `retain` (a row name), forget quality and PrivLeak of
    every row against that model."""
    from alignkit.models.loading import load_causal_lm, load_tokenizer

    rows, details = {}, {}
    for name, path in models.items():
        rows[name], details[name] = evaluate_model(load_causal_lm(path, dtype), load_tokenizer(path), sets,
                                                   max_new_tokens=max_new_tokens, batch_size=batch_size)
    if retain:
        for name in rows:
            rows[name].update(compare_to_retain(details[name], details[retain]))
    return rows


REPORT_KEYS = ("forget/rouge", "forget/fact", "forget/prob", "forget/truth_ratio", "forget/knowmem", "forget_quality",
               "verbmem", "mia/mink", "mia/minkpp", "mia/loss", "mia/zlib", "privleak", "retain/rouge", "retain/fact",
               "retain/prob", "retain/truth_ratio", "utility")


def results_table(rows: dict[str, dict]) -> str:
    names = list(rows)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    extra = sorted({k for m in rows.values() for k in m} - set(REPORT_KEYS))
    for key in (*REPORT_KEYS, *extra):
        if any(key in rows[n] for n in names):
            cells = [f"{rows[n][key]:.3g}" if key in rows[n] else "—" for n in names]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
