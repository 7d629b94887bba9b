"""LoRA through PEFT (`model.lora`): every record kind trains its adapters only; the reference is the policy with
its adapters off (= the base model); the merged export reloads as a plain model with the adapter model's
log-probs, and `final_adapter/` loads with PEFT; resume gives the same per-step losses; the clear errors."""
import json
from pathlib import Path

import pytest
import torch

from alignkit.config import recipe_from_dict
from alignkit.engine.loop import RunHooks, TrainData, train
from alignkit.errors import RecipeError
from alignkit.kinds import all_kinds
from alignkit.objectives.registry import _REGISTRY, _load_builtin_objectives
from alignkit.pipelines.preference import prepare_data
from tests.engine.test_device_seam import DATA, PARAMS

_load_builtin_objectives()
# one objective per record kind, from the registry (a new kind is covered without editing this test)
BY_KIND = {k.name: sorted(n for n, o in _REGISTRY.items() if o.kind == k.name)[0] for k in all_kinds()}
LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]}


def base_model(kind: str) -> str:
    """tiny-llama, with the kind's special tokens added (FCP's <EF>, </EF>) as the pipelines do."""
    from alignkit.kinds import get_kind
    from alignkit.models.loading import resolve_model_path
    from alignkit.models.special_tokens import with_special_tokens

    return resolve_model_path(with_special_tokens("builtin:tiny-llama", get_kind(kind).special_tokens))


def lora_recipe(out, name, steps=2, **sections):
    kind = _REGISTRY[name].kind
    base = {"run": {"output_dir": str(out)}, "model": {"path": base_model(kind), "lora": LORA},
            "data": {**DATA[kind], "train_size": 8, "eval_size": 4, "max_length": 64, "max_prompt_length": 40},
            "objective": {"name": name, **PARAMS.get(name, {})}, "optim": {"lr": 1e-2},
            "trainer": {"backend": "torch", "max_steps": steps, "micro_batch_size": 2, "progress_bar": False},
            "eval": {"generate": False}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return recipe_from_dict(base)


def run(recipe, hooks=None):
    encoded, _ = prepare_data(recipe)
    data = TrainData(encoded["kind"], encoded["train"], encoded["eval"], encoded["pad_id"], encoded["retain"])
    out = Path(recipe.output_dir)
    train(recipe, data, out, hooks=hooks)
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_every_record_kind_trains_its_adapters_only(tmp_path, kind, tiny_model_dir):
    from safetensors.torch import load_file

    name = BY_KIND[kind]
    recipe = lora_recipe(tmp_path, name)
    records = run(recipe)
    assert "train/loss" in records[-1] and "eval/loss" in records[0]
    adapter = load_file(tmp_path / "final_adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter.items())  # B starts at 0: it trained
    merged = load_file(tmp_path / "final" / "model.safetensors")
    base = load_file(f"{base_model(kind)}/model.safetensors")
    changed = {k for k in base if k in merged and not torch.equal(merged[k], base[k])}
    assert changed and all(any(t in k for t in LORA["target_modules"]) or "score" in k for k in changed), changed
    assert "model.layers.0.self_attn.k_proj.weight" not in changed  # not a target: the base weight as it was


def test_adapters_off_reference_is_the_base_model(tmp_path, tiny_model_dir):
    from alignkit.config.schema import LoraConfig
    from alignkit.engine.reference import LiveReference
    from alignkit.kinds import get_kind
    from alignkit.models.loading import load_causal_lm
    from alignkit.models.logps import forward_batch
    from alignkit.models.lora import apply_lora

    recipe = lora_recipe(tmp_path, "dpo")
    encoded, _ = prepare_data(recipe)
    batch = get_kind("pairs").collate(encoded["train"][:2], encoded["pad_id"])
    base = load_causal_lm(tiny_model_dir).eval()
    policy = apply_lora(load_causal_lm(tiny_model_dir), LoraConfig(r=4, alpha=8, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_()  # adapters that change the outputs
    import contextlib

    ctx = contextlib.nullcontext()
    with torch.no_grad():
        on = forward_batch(policy, batch, ctx)["seq_logps"]
        expected = forward_batch(base, batch, ctx)["seq_logps"]
    off = LiveReference.adapters_off(policy, ctx).logps(batch)
    assert not torch.allclose(on, expected, atol=1e-3)
    # the same weights and the same operations: equal to the last bit
    assert torch.equal(off, expected)
    policy.train()
    LiveReference.adapters_off(policy, ctx).logps(get_kind("pairs").collate(encoded["train"][2:4], encoded["pad_id"]))
    assert policy.training


def test_merged_export_equals_the_adapter_model(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from alignkit.kinds import get_kind
    from alignkit.models.logps import forward_batch

    recipe = lora_recipe(tmp_path, "pmpo", steps=3)  # live reference: the adapters-off policy
    records = run(recipe)
    assert records[1]["train/kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy = reference (B = 0)
    encoded, _ = prepare_data(recipe)
    batch = get_kind("unpaired").collate(encoded["eval"][:4], encoded["pad_id"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                        tmp_path / "final_adapter").eval()
    import contextlib

    with torch.no_grad():
        a = forward_batch(merged, batch, contextlib.nullcontext())["seq_logps"]
        b = forward_batch(adapted, batch, contextlib.nullcontext())["seq_logps"]
    # W + s·BA folded in fp32 vs x·W + s·(x·A)·B: the same math in another order; |logp| ~ 100 over ~30 tokens of a
    # 49k vocabulary, fp32 rounding ~1e-7 relative per operation
    assert a == pytest.approx(b, rel=1e-4)


def test_resume_with_lora_gives_the_same_losses(tmp_path):
    def losses(out):
        return {r["step"]: r["train/loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                if "train/loss" in r}

    def hooks(ckpt):
        return RunHooks(save_checkpoint=lambda step, metrics, write: write(ckpt / f"step_{step}"))

    full = tmp_path / "full"
    run(lora_recipe(full, "dpo", steps=4, trainer={"checkpoint_every": 2}), hooks(tmp_path / "ckpt"))
    part = tmp_path / "part"
    part.mkdir()
    (part / "metrics.jsonl").write_text("\n".join(x for x in (full / "metrics.jsonl").read_text().splitlines()
                                                  if json.loads(x)["step"] <= 2) + "\n")
    run(lora_recipe(part, "dpo", steps=4), RunHooks(resume_dir=tmp_path / "ckpt" / "step_2"))
    a, b = losses(full), losses(part)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:  # the same operations in the same order after the resume
        assert b[step] == pytest.approx(a[step], abs=1e-5), step


def test_lora_errors(tmp_path):
    with pytest.raises(RecipeError, match="optim.trainable.*does not compose with model.lora"):
        lora_recipe(tmp_path, "dpo", optim={"trainable": ["q_proj"]})
    with pytest.raises(RecipeError, match="model.lora.load_in_4bit.*needs GPU workers"):
        lora_recipe(tmp_path, "dpo", model={"lora": {**LORA, "load_in_4bit": True}})
    with pytest.raises(RecipeError, match="unknown key `model.lora.rank`"):
        lora_recipe(tmp_path, "dpo", model={"lora": {"rank": 4}})
    with pytest.raises(RecipeError, match="model.lora.*r must be >= 1"):
        lora_recipe(tmp_path, "dpo", model={"lora": {"r": 0}})


@pytest.mark.parametrize("name", ["dpo", "pmpo", "rmu"])  # precomputed, adapters-off and hidden-state references
def test_lora_runs_through_the_device_seam(tmp_path, name):
    from tests.device_check import DeviceCheck

    with DeviceCheck() as check:
        run(lora_recipe(tmp_path, name, steps=1))
    check.assert_clean()


def test_a_head_trained_beside_tied_embeddings_survives_export(tmp_path, tiny_model_dir):
    """tiny-llama ties lm_head to the input embeddings; LoRA's modules_to_save trains a copy of the head. The export
    keeps both and says untied: with `tie_word_embeddings: true` (before the fix) loaders that honour it (vLLM skips
    lm_head.weight of a tied model) would use the embeddings as the head."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    recipe = lora_recipe(tmp_path, "dpo", model={"lora": {**LORA, "modules_to_save": ["lm_head"]}})
    run(recipe)
    saved = load_file(tmp_path / "final" / "model.safetensors")
    assert not torch.equal(saved["lm_head.weight"], saved["model.embed_tokens.weight"])  # the head trained
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert torch.equal(reloaded.lm_head.weight, saved["lm_head.weight"])
    assert torch.equal(reloaded.model.embed_tokens.weight, saved["model.embed_tokens.weight"])
    assert json.loads((tmp_path / "final" / "config.json").read_text())["tie_word_embeddings"] is False
