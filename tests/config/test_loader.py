"""Recipe loading: inheritance, overrides, interpolation, and errors that name the key, the file and what is allowed."""
import pytest

from alignkit.config import dump_recipe, load_recipe, recipe_from_dict
from alignkit.errors import RecipeError

BASE = """
run: {name: base}
model: {path: builtin:tiny-llama}
data: {train: builtin:concise_arithmetic}
objective: {name: dpo, beta: 0.1}
optim: {lr: 1.0e-5}
trainer: {max_steps: 10}
"""


@pytest.fixture
def recipe_dir(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE)
    return tmp_path


def write(dirpath, name, text):
    path = dirpath / name
    path.write_text(text)
    return path


def test_base_inheritance_and_override(recipe_dir):
    child = write(recipe_dir, "child.yaml", "base: base.yaml\nrun: {name: child}\nobjective: {loss_type: ipo}\n")
    recipe = load_recipe(child, ["optim.lr=3e-5", "trainer.max_steps=7"])
    assert recipe.run.name == "child"
    assert recipe.model.path == "builtin:tiny-llama"  # inherited
    assert recipe.objective.name == "dpo" and recipe.objective.params == {"beta": 0.1, "loss_type": "ipo"}
    assert recipe.optim.lr == pytest.approx(3e-5)  # `3e-5` is a string to YAML 1.1; coerced to float
    assert recipe.trainer.max_steps == 7
    assert recipe.output_dir == "runs/child"


def test_interpolation(recipe_dir):
    child = write(recipe_dir, "c.yaml", "base: base.yaml\nrun: {name: x, output_dir: 'out/${run.name}'}\n")
    assert load_recipe(child).output_dir == "out/x"


def test_unknown_key_names_file_and_suggestion(recipe_dir):
    child = write(recipe_dir, "typo.yaml", "base: base.yaml\noptim: {lrr: 0.1}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    assert "unknown key `optim.lrr`" in str(err.value)
    assert "typo.yaml" in str(err.value)
    assert "did you mean `optim.lr`?" in str(err.value)


def test_unknown_key_in_base_names_the_base_file(recipe_dir):
    write(recipe_dir, "bad_base.yaml", BASE + "cluster: {num_wrkers: 2}\n")
    child = write(recipe_dir, "child.yaml", "base: bad_base.yaml\n")
    with pytest.raises(RecipeError, match=r"unknown key `cluster.num_wrkers` in .*bad_base.yaml; did you mean "
                                          r"`cluster.num_workers`"):
        load_recipe(child)


def test_unknown_override_names_command_line(recipe_dir):
    with pytest.raises(RecipeError, match="unknown key `trainer.max_step` in command-line overrides"):
        load_recipe(recipe_dir / "base.yaml", ["trainer.max_step=3"])


def test_wrong_type_and_literal(recipe_dir):
    with pytest.raises(RecipeError, match=r"`trainer.max_steps` in .* must be an integer, got 'ten'"):
        load_recipe(recipe_dir / "base.yaml", ["trainer.max_steps=ten"])
    with pytest.raises(RecipeError, match="`trainer.backend` .* must be one of deepspeed, torch, got 'jax'"):
        load_recipe(recipe_dir / "base.yaml", ["trainer.backend=jax"])
    with pytest.raises(RecipeError, match="`optim.lr` .* must be a number"):
        load_recipe(recipe_dir / "base.yaml", ["optim.lr=fast"])


def test_objective_params_are_validated(recipe_dir):
    with pytest.raises(RecipeError, match="unknown key `objective.bta`.*did you mean `objective.beta`"):
        load_recipe(recipe_dir / "base.yaml", ["objective.bta=0.2"])
    with pytest.raises(RecipeError, match="objective `dpo`.*eps must be in"):
        load_recipe(recipe_dir / "base.yaml", ["objective.loss_type=robust", "objective.eps=0.7"])
    with pytest.raises(RecipeError, match="unknown objective `dpoo`; available: .*dpo, "):
        load_recipe(recipe_dir / "base.yaml", ["objective.name=dpoo"])


def test_cross_key_checks(recipe_dir):
    with pytest.raises(RecipeError, match="torch backend runs one worker"):
        load_recipe(recipe_dir / "base.yaml", ["trainer.backend=torch", "cluster.num_workers=2"])
    with pytest.raises(RecipeError, match="needs a reference model"):
        load_recipe(recipe_dir / "base.yaml", ["reference.mode=none"])
    with pytest.raises(RecipeError, match="zero_stage"):
        load_recipe(recipe_dir / "base.yaml", ["trainer.zero_stage=4"])
    with pytest.raises(RecipeError, match="data.max_prompt_length"):
        load_recipe(recipe_dir / "base.yaml", ["data.max_length=64", "data.max_prompt_length=64"])
    with pytest.raises(RecipeError, match="collective needs rollout.backend: vllm"):
        load_recipe(recipe_dir / "base.yaml", ["rollout.backend=hf", "rollout.weight_sync=collective"])
    with pytest.raises(RecipeError, match="sleep mode frees GPU memory"):
        load_recipe(recipe_dir / "base.yaml", ["rollout.colocate=true"])  # engines on CPU
    assert load_recipe(recipe_dir / "base.yaml", ["rollout.colocate=true", "rollout.gpus_per_engine=0.5",
                                                  "rollout.backend=vllm"]).rollout.colocate


def test_missing_file_cycle_and_bad_yaml(recipe_dir):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(recipe_dir / "nope.yaml")
    write(recipe_dir, "a.yaml", "base: b.yaml\n")
    write(recipe_dir, "b.yaml", "base: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(recipe_dir / "a.yaml")
    bad = write(recipe_dir, "bad.yaml", "run: {name: [unclosed\n")
    with pytest.raises(RecipeError, match="cannot parse"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe(recipe_dir / "base.yaml", ["optim.lr"])


def test_global_batch_size_and_round_trip(recipe_dir):
    recipe = load_recipe(recipe_dir / "base.yaml", ["trainer.micro_batch_size=2", "trainer.grad_accum=3",
                                                    "cluster.num_workers=4"])
    assert recipe.global_batch_size == 24
    again = write(recipe_dir, "again.yaml", dump_recipe(recipe) + "provenance: {git_sha: abc}\n")
    assert load_recipe(again) == recipe.__class__(**{**recipe.__dict__, "source": str(again)})


def test_recipe_from_dict_requires_objective():
    with pytest.raises(RecipeError, match="objective.name` is required"):
        recipe_from_dict({"data": {"train": "x.jsonl"}})


def test_sweep_space_is_replaced_not_merged(recipe_dir):
    write(recipe_dir, "sweep_base.yaml", "base: base.yaml\nsweep: {space: {optim.lr: {grid: [0.1, 0.2]}}}\n")
    child = write(recipe_dir, "sweep_child.yaml",
                  "base: sweep_base.yaml\nsweep: {space: {optim.lr: {loguniform: [1.0e-5, 1.0e-3]}}}\n")
    assert load_recipe(child).sweep.space == {"optim.lr": {"loguniform": [1e-5, 1e-3]}}
    with pytest.raises(RecipeError, match="unknown swept key `optim.lrr`.*did you mean `optim.lr`"):
        load_recipe(child, ["sweep.space={optim.lrr: {grid: [1, 2]}}"])
    with pytest.raises(RecipeError, match="loguniform"):
        load_recipe(child, ["sweep.space={optim.lr: {loguniform: [0, 1]}}"])


def test_recipe_derive_validates_and_replaces_sections(recipe_dir):
    recipe = load_recipe(recipe_dir / "base.yaml")
    derived = recipe.derive({"trainer.max_steps": 7, "objective": {"name": "sft"}, "sweep": {}})
    assert derived.trainer.max_steps == 7 and derived.objective.name == "sft" and derived.objective.params == {}
    assert recipe.trainer.max_steps != 7  # the original is untouched
    with pytest.raises(RecipeError, match="trainer.max_steps"):
        recipe.derive({"trainer.max_steps": 0})


def test_online_keys_can_be_swept():
    from alignkit.config import recipe_from_dict
    from alignkit.distributed.tune import _check_values

    recipe = recipe_from_dict({
        "model": {"path": "builtin:tiny-llama"}, "objective": {"name": "pmpo"},
        "online": {"rounds": 2, "prompts": "builtin:concise_arithmetic"},
        "sweep": {"space": {"online.samples_per_prompt": {"grid": [2, 4]}, "online.temperature": {"choice": [0.7, 1]}},
                  "metric": "train/loss"}})
    _check_values(recipe)  # every swept value builds a valid trial recipe
    bad = recipe.derive({"sweep.space": {"online.samples_per_prompt": {"grid": [0, 4]}}})
    with pytest.raises(RecipeError, match="sweep value online.samples_per_prompt=0"):
        _check_values(bad)


def test_fp16_is_refused_with_the_reason(recipe_dir):
    for override, key in (("trainer.precision=fp16", "trainer.precision"), ("model.dtype=float16", "model.dtype")):
        with pytest.raises(RecipeError, match=rf"`{key}` in command-line overrides: .*without loss scaling.* use "
                                              r"bf16"):
            load_recipe(recipe_dir / "base.yaml", [override])
    assert load_recipe(recipe_dir / "base.yaml", ["model.dtype=bfloat16"]).model.dtype == "bfloat16"


def test_attn_implementation_is_validated_and_resolved(recipe_dir):
    from alignkit.errors import AlignkitError
    from alignkit.models.loading import load_causal_lm, resolve_attn_implementation

    with pytest.raises(RecipeError, match="model.attn_implementation.*auto, sdpa, flash_attention_2, eager"):
        load_recipe(recipe_dir / "base.yaml", ["model.attn_implementation=flash"])
    assert load_recipe(recipe_dir / "base.yaml", ["model.attn_implementation=eager"]).model.attn_implementation == \
        "eager"
    assert resolve_attn_implementation("auto", on_cuda=False) == "sdpa"
    assert resolve_attn_implementation("auto", on_cuda=True, dtype="float32") == "sdpa"  # FA2 kernels take no fp32
    assert resolve_attn_implementation("eager", on_cuda=False) == "eager"
    with pytest.raises(AlignkitError, match="flash_attention_2 needs a CUDA GPU .* sees no GPU"):
        resolve_attn_implementation("flash_attention_2", on_cuda=False)
    assert load_causal_lm("builtin:tiny-llama", attn="eager").config._attn_implementation == "eager"
    assert load_causal_lm("builtin:tiny-llama").config._attn_implementation == "sdpa"


def test_pbt_sweeps_are_checked_before_any_trial():
    """sweep.scheduler: pbt restarts trials mid-run with mutated values: what a resumed run cannot take, metrics
    that exist only after training, and settings where no perturbation can happen fail at load time."""
    pbt = load_recipe("recipes/sweeps/tiny_pbt.yaml")
    assert pbt.sweep.scheduler == "pbt" and pbt.sweep.perturbation_interval == 2
    cases = {
        "sweep.space={trainer.micro_batch_size: {grid: [2, 4]}}": "optim.lr and objective parameters",
        "sweep.space={objective.name: {grid: [dpo, ipo]}}": "optim.lr and objective parameters",
        "sweep.metric=gen/format": "must be an eval/ or train/ one",
        "data.eval=null": "eval/loss needs held-out data, and this recipe sets no data.eval",
        "sweep.search=optuna": "use search random or grid",
        "sweep.perturbation_interval=0": "perturbation_interval > 0",
        "sweep.perturbation_interval=3": "multiple of trainer.eval_every",
        "sweep.perturbation_interval=12": "leaves no perturbation before trainer.max_steps",
        "sweep.max_concurrent_trials=1": "population of >= 2 trials running together",
        "sweep.space={optim.lr: {choice: [0.1, 0.01]}}": "population of >= 2 trials",  # 1 sample of a choice
    }
    for override, message in cases.items():
        with pytest.raises(RecipeError, match=message):
            load_recipe("recipes/sweeps/tiny_pbt.yaml", [override])
    ok = load_recipe("recipes/sweeps/tiny_pbt.yaml", ["sweep.space={optim.lr: {choice: [0.1, 0.01]}}",
                                                      "sweep.num_samples=2"])
    assert ok.sweep.num_samples == 2
