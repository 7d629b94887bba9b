"""Load a recipe: YAML files with `base:` inheritance, `${...}` interpolation and `a.b=c` overrides, validated
against the schema before anything starts. Errors name the key, the file that set it and what is allowed."""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignkit.config.schema import ObjectiveConfig, Recipe
from alignkit.errors import AlignkitError, RecipeError

CLI = "command-line overrides"


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read `path` (and its `base:` chain), apply `overrides` (`a.b=c`), validate, return a typed Recipe."""
    path = Path(path)
    origins: dict[str, str] = {}
    merged = _load_with_bases(path, origins, chain=())
    removals = [o for o in overrides if o.startswith("~")]
    overrides = [o for o in overrides if not o.startswith("~")]
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise RecipeError(f"override `{bad[0]}` in {CLI} must look like key=value (for example optim.lr=1e-5), "
                              "or ~key to remove a key")
        try:
            cli = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as exc:
            raise RecipeError(f"cannot parse {CLI}: {exc}") from None
        _record_origins(cli, CLI, origins)
        merged = _merge(merged, OmegaConf.create(cli))
    for removal in removals:  # `~objective.beta`: drop a key the recipe (or its base) set
        key = removal[1:].split("=", 1)[0]
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(merged, parent) if parent else merged
        if node is None or not OmegaConf.is_dict(node) or leaf not in node:
            raise RecipeError(f"override `{removal}` in {CLI}: the recipe sets no key `{key}`")
        node.pop(leaf)
        origins.pop(key, None)
    try:
        data = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        raise RecipeError(f"cannot resolve an interpolation in {path}: {exc}".replace("\n", " ")) from None
    return recipe_from_dict(data, source=str(path), origins=origins)


def _load_with_bases(path: Path, origins: dict[str, str], chain: tuple[Path, ...]):
    if not path.exists():
        raise RecipeError(f"recipe file {path} does not exist")
    if path.resolve() in chain:
        raise RecipeError(f"`base:` cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and OmegaConf errors carry line numbers in their message
        raise RecipeError(f"cannot parse {path}: {exc}".replace("\n", " ")) from None
    if not OmegaConf.is_dict(cfg):
        raise RecipeError(f"{path} must contain a mapping of sections (run:, model:, data:, ...)")
    bases = cfg.pop("base", None)
    merged = OmegaConf.create()
    for base in [bases] if isinstance(bases, str) else list(bases or []):
        merged = _merge(merged, _load_with_bases(Path(os.path.normpath(path.parent / base)), origins,
                                                 (*chain, path.resolve())))
    _record_origins(OmegaConf.to_container(cfg, resolve=False), str(path), origins)
    return _merge(merged, cfg)


def _merge(base, newer):
    """Deep merge, except that a `sweep.space` set by the newer layer replaces the older one whole (merging two
    search spaces key by key would combine, say, a grid with a loguniform for the same key)."""
    merged = OmegaConf.merge(base, newer)
    space = OmegaConf.select(newer, "sweep.space")
    if space is not None:
        merged.sweep.space = space
    return merged


def _record_origins(tree: Any, origin: str, origins: dict[str, str], prefix: str = "") -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            dotted = f"{prefix}{key}"
            origins[dotted] = origin
            _record_origins(value, origin, origins, dotted + ".")


def recipe_from_dict(data: dict, source: str = "<dict>", origins: dict[str, str] | None = None) -> Recipe:
    """Build and validate a Recipe from plain data (what the YAML holds)."""
    origins = origins or {}

    def where(key: str) -> str:
        # The file (or command line) that set this key or its closest parent.
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in origins:
                return origins[".".join(parts[:n])]
        return source

    data = dict(data or {})
    data.pop("base", None)
    data.pop("provenance", None)  # written by runs into recipe.yaml; not a setting
    objective_data = data.pop("objective", None)
    recipe = _build(Recipe, data, "", where)
    recipe.source = source
    recipe.objective = _build_objective(objective_data, where)
    check_recipe(recipe, where)
    return recipe


def _build(cls, data: Any, prefix: str, where):
    if not isinstance(data, dict):
        raise RecipeError(f"`{prefix.rstrip('.') or 'recipe'}` in {where(prefix.rstrip('.'))} must be a mapping, "
                          f"got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise RecipeError(_unknown_key_message(dotted, where(dotted), [f"{prefix}{k}" for k in fields]))
        hint = hints[key]
        optional = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]  # `Settings | None`
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value if value is not None else {}, dotted + ".", where)
        elif optional and type(None) in typing.get_args(hint):
            values[key] = None if value is None else _build(optional[0], value, dotted + ".", where)
        else:
            values[key] = _coerce(value, hint, dotted, where)
    return cls(**values)


def _unknown_key_message(key: str, origin: str, allowed: list[str]) -> str:
    guess = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean `{guess[0]}`?" if guess else f"; allowed keys here: {', '.join(sorted(allowed))}"
    return f"unknown key `{key}` in {origin}{hint}"


def _type_name(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(hint))
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (list, dict):
        return f"a {origin.__name__}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _coerce(value: Any, hint, key: str, where) -> Any:
    """Return `value` as type `hint`, or raise a RecipeError naming the key, file and expected type."""
    def fail():
        raise RecipeError(f"`{key}` in {where(key)} must be {_type_name(hint)}, got {value!r}")

    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(hint) and type(value) is type(typing.get_args(hint)[0]):
            return value
        fail()
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except RecipeError:
                pass
        fail()
    if origin is list:
        if not isinstance(value, list):
            fail()
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(v, item, key, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        fail()
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                fail()
        fail()
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        fail()
    return value


def _build_objective(data: Any, where) -> ObjectiveConfig:
    from alignkit.objectives import get_objective

    if data is None or not isinstance(data, dict) or not data.get("name"):
        raise RecipeError(f"`objective.name` is required (in {where('objective')}); for example `objective: "
                          "{name: dpo, beta: 0.1}`")
    data = dict(data)
    name = data.pop("name")
    try:
        objective = get_objective(str(name))
    except RecipeError as exc:
        raise RecipeError(f"{exc} (`objective.name` in {where('objective.name')})") from None
    hints = typing.get_type_hints(objective.params_cls)
    allowed = [f.name for f in dataclasses.fields(objective.params_cls)]
    params = {}
    for key, value in data.items():
        dotted = f"objective.{key}"
        if key not in allowed:
            if key in _params_of_other_objectives(str(name)) and not difflib.get_close_matches(key, allowed, n=1,
                                                                                                  cutoff=0.6):
                # Most often the objective was switched (say on the command line) and a parameter of the earlier
                # one stayed, from the base recipe.
                params_doc = ", ".join(allowed) if allowed else "none"
                also = (f"; `{dotted}` comes from {where(dotted)}, written for another objective"
                        if where(dotted) != where("objective.name") else "")
                raise RecipeError(
                    f"objective `{name}` (set in {where('objective.name')}) has no parameter `{key}` (its "
                    f"parameters: {params_doc}){also}. Drop it with the override `~{dotted}`")
            raise RecipeError(_unknown_key_message(dotted, where(dotted), ["objective.name"]
                                                   + [f"objective.{k}" for k in allowed]))
        params[key] = _coerce(value, hints[key], dotted, where)
    try:
        objective.make_params(params)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"objective `{name}` in {where('objective')}: {exc}") from None
    return ObjectiveConfig(name=str(name), params=params)


def _params_of_other_objectives(name: str) -> set[str]:
    from alignkit.objectives.registry import _REGISTRY

    return {f.name for other, o in _REGISTRY.items() if other != name for f in dataclasses.fields(o.params_cls)}


def _check_scheduler(recipe: Recipe, need) -> None:
    """optim.scheduler with its warm-up and scheduler_kwargs, built once on a throwaway optimizer (transformers
    checks the arguments each schedule needs)."""
    import torch
    from transformers import get_scheduler

    o = recipe.optim
    need(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    need(not (o.scheduler == "constant" and o.warmup_steps), "optim.warmup_steps",
         "the constant schedule has no warm-up; use optim.scheduler: constant_with_warmup")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        # (with trainer.num_epochs the step count is known once the data is read: a stand-in long enough here)
        steps = recipe.trainer.max_steps if recipe.trainer.num_epochs is None else max(recipe.trainer.max_steps,
                                                                                        o.warmup_steps + 1)
        get_scheduler(o.scheduler, optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=steps,
                      scheduler_specific_kwargs=dict(o.scheduler_kwargs))
    except (TypeError, ValueError, AssertionError) as exc:
        need(False, "optim.scheduler_kwargs", f"not valid for optim.scheduler {o.scheduler}: {exc}")


def check_recipe(recipe: Recipe, where=lambda key: "the recipe") -> None:
    """Checks across keys: everything a worker would otherwise discover too late."""
    from alignkit.objectives import get_objective

    def need(cond: bool, key: str, message: str):
        if not cond:
            raise RecipeError(f"`{key}` in {where(key)}: {message}")

    t, d, c = recipe.trainer, recipe.data, recipe.cluster
    o = recipe.online
    need(bool(d.train) or o.rounds > 0 or bool(recipe.steps.problems), "data.train",
         "is required (builtin:<name>, a .jsonl/.json/.parquet file, or a hub id)")
    need(o.rounds >= 0, "online.rounds", f"must be >= 0 (0 = an offline run), got {o.rounds}")
    if o.rounds > 0:
        need(bool(o.prompts), "online.prompts", "is required for an online run (builtin:<name>, a file or a hub id "
             "whose rows have `prompt`)")
        for key in ("steps_per_round", "prompts_per_round", "samples_per_prompt", "max_new_tokens"):
            need(getattr(o, key) >= 1, f"online.{key}", f"must be >= 1, got {getattr(o, key)}")
        need(o.eval_every >= 0 and o.max_extra_rounds >= 0 and o.eval_size >= 0, "online",
             "eval_every, eval_size and max_extra_rounds must be >= 0")
        need(o.temperature >= 0 and 0 < o.top_p <= 1, "online.temperature", "temperature must be >= 0 and top_p in "
             "(0, 1]")
        need(recipe.reference.mode != "precompute", "reference.mode",
             "online rows are generated during training, so their reference log-probs cannot be precomputed; use "
             "live or auto")
    st = recipe.steps
    if st.problems:
        need(o.rounds == 0, "steps.problems", "a per-step-negatives run is not an online run; set online.rounds: 0")
        for key in ("num_problems", "samples_per_problem", "max_negatives", "k", "groups", "max_new_tokens"):
            need(getattr(st, key) >= 1, f"steps.{key}", f"must be >= 1, got {getattr(st, key)}")
        need(st.sft_problems >= 0 and st.sft_steps >= 1, "steps.sft_problems", "sft_problems must be >= 0 and "
             "sft_steps >= 1")
        need(st.critical != "oracle" or st.split_pattern is None, "steps.critical",
             "oracle (the checker's first wrong line) needs the default line steps; remove steps.split_pattern")
        if st.split_pattern is not None:
            import re

            try:
                re.compile(st.split_pattern)
            except re.error as exc:
                need(False, "steps.split_pattern", f"is not a regular expression: {exc}")
        need(st.use_problems is None or 1 <= st.use_problems <= st.num_problems, "steps.use_problems",
             f"must be between 1 and steps.num_problems ({st.num_problems}), got {st.use_problems}")
        need(st.awr_beta > 0 and st.awr_max_weight > 0, "steps.awr_beta", "awr_beta and awr_max_weight must be > 0")
    fp16 = ("without loss scaling, which alignkit does not do (small gradients underflow to zero in float16); use "
            "bf16 (GPUs from Ampere on, and CPUs) or fp32")
    need(t.precision != "fp16", "trainer.precision", f"fp16 would train {fp16}")
    need(recipe.model.dtype != "float16", "model.dtype", f"float16 weights would train {fp16}: model.dtype "
         "bfloat16, or float32 with trainer.precision bf16")
    need(t.max_steps > 0, "trainer.max_steps", f"must be > 0, got {t.max_steps}")
    need(t.num_epochs is None or t.num_epochs > 0, "trainer.num_epochs", f"must be > 0, got {t.num_epochs}")
    need(t.num_epochs is None or o.rounds == 0, "trainer.num_epochs",
         "an online run's steps are online.rounds x online.steps_per_round; remove trainer.num_epochs")
    _check_scheduler(recipe, need)
    import importlib.util

    for name in recipe.run.loggers:
        need(name == "jsonl" or importlib.util.find_spec(name) is not None, "run.loggers",
             f"{name} needs the {name} package (pip install {name})")
    lora = recipe.model.lora
    if lora is not None:
        need(lora.r >= 1 and lora.alpha > 0 and 0 <= lora.dropout < 1, "model.lora",
             f"r must be >= 1, alpha > 0 and dropout in [0, 1); got r {lora.r}, alpha {lora.alpha}, dropout "
             f"{lora.dropout}")
        need(not recipe.optim.trainable, "optim.trainable",
             "does not compose with model.lora: with LoRA only the adapters train; name modules to train in full "
             "in model.lora.modules_to_save")
        need(not lora.load_in_4bit or c.use_gpu, "model.lora.load_in_4bit",
             "QLoRA keeps the base model in 4-bit NF4 through bitsandbytes' CUDA kernels, so it needs GPU workers "
             "(cluster.use_gpu: true); on CPUs use LoRA without it")
        need(not lora.load_in_4bit, "model.lora.load_in_4bit",
             "is not supported yet: folding the adapters into a 4-bit base (for final/ and the rollout engines) needs "
             "the base dequantized first, which alignkit does not do yet; use LoRA on a bf16 base")
    need(t.micro_batch_size > 0, "trainer.micro_batch_size", f"must be > 0, got {t.micro_batch_size}")
    need(t.grad_accum > 0, "trainer.grad_accum", f"must be > 0, got {t.grad_accum}")
    need(t.zero_stage in (0, 1, 2, 3), "trainer.zero_stage", f"must be one of 0, 1, 2, 3; got {t.zero_stage}")
    need(t.eval_every >= 0, "trainer.eval_every", "must be >= 0 (0 = evaluate at start and end only)")
    need(t.log_every > 0, "trainer.log_every", "must be > 0")
    need(t.checkpoint_every >= 0, "trainer.checkpoint_every", "must be >= 0 (0 = no checkpoints)")
    need(t.export_every >= 0, "trainer.export_every", "must be >= 0 (0 = only the final model)")
    ro = recipe.rollout
    need(ro.num_engines >= 1, "rollout.num_engines", f"must be >= 1, got {ro.num_engines}")
    need(ro.sync_bucket_mb >= 1, "rollout.sync_bucket_mb", f"must be >= 1, got {ro.sync_bucket_mb}")
    need(not (ro.weight_sync == "collective" and ro.backend == "hf"), "rollout.weight_sync",
         "collective needs rollout.backend: vllm (the hf engine takes weights through the object store)")
    need(not ro.colocate or (ro.backend != "hf" and ro.gpus_per_engine > 0), "rollout.colocate",
         "needs vLLM engines on GPUs (rollout.backend: vllm, gpus_per_engine > 0): vLLM's sleep mode frees GPU "
         "memory and is not available on CPU")
    need(t.keep_checkpoints > 0, "trainer.keep_checkpoints", "must be > 0")
    need(c.max_failures >= 0, "cluster.max_failures", "must be >= 0")
    need(c.max_failures == 0 or t.checkpoint_every > 0, "cluster.max_failures",
         "recovering from a failure needs checkpoints: set trainer.checkpoint_every")
    need(not (t.offload_optimizer or t.offload_params) or (t.backend == "deepspeed" and t.zero_stage >= 1),
         "trainer.offload_optimizer", "CPU offload needs backend deepspeed with zero_stage >= 1")
    need(not t.offload_params or t.zero_stage == 3, "trainer.offload_params", "parameter offload needs zero_stage 3")
    need(t.checkpoint_metric is None or t.checkpoint_metric.startswith(("eval/", "train/")),
         "trainer.checkpoint_metric", "must name a logged metric such as eval/loss or train/loss")
    need(t.checkpoint_metric is None or not t.checkpoint_metric.startswith("eval/") or bool(d.eval),
         "trainer.checkpoint_metric", "an eval/ metric needs data.eval")
    need(recipe.run.resume in (None, "auto") or Path(recipe.run.resume).exists(), "run.resume",
         f"must be auto or an existing checkpoint directory, got {recipe.run.resume!r}")
    need(c.num_workers > 0, "cluster.num_workers", f"must be > 0, got {c.num_workers}")
    need(c.cpus_per_worker > 0, "cluster.cpus_per_worker", "must be > 0")
    need(t.backend == "deepspeed" or c.num_workers == 1, "trainer.backend",
         "the torch backend runs one worker; use backend deepspeed (zero_stage 0 is plain data parallel) "
         f"for cluster.num_workers={c.num_workers}")
    need(t.backend == "deepspeed" or t.zero_stage == 0, "trainer.zero_stage", "ZeRO needs trainer.backend: deepspeed")
    need(0 < d.max_prompt_length < d.max_length, "data.max_prompt_length",
         f"must be > 0 and < data.max_length ({d.max_length}), got {d.max_prompt_length}")
    need(recipe.optim.lr > 0, "optim.lr", f"must be > 0, got {recipe.optim.lr}")
    need(len(recipe.optim.betas) == 2, "optim.betas", "must be a list of two numbers")
    need(recipe.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(recipe.optim.warmup_steps < t.max_steps or recipe.optim.warmup_steps == 0 or t.num_epochs is not None,
         "optim.warmup_steps",
         f"must be smaller than trainer.max_steps ({t.max_steps})")
    check_sweep(recipe, where)
    objective = get_objective(recipe.objective.name)
    need(not (objective.reference == "required" and recipe.reference.mode == "none"), "reference.mode",
         f"objective `{objective.name}` needs a reference model; use precompute, live or auto")
    need(not (objective.distributions and recipe.reference.mode == "precompute"), "reference.mode",
         f"objective `{objective.name}` needs the reference's full next-token distributions, which precompute "
         "cannot hold (vocabulary x response tokens per example); use live or auto")
    need("retain" not in objective.needs or bool(d.retain), "data.retain",
         f"objective `{objective.name}` trains on retain data beside the forget set; set data.retain "
         "(and data.retain_split)")
    need(not (objective.live_reference and recipe.reference.mode == "precompute"), "reference.mode",
         f"objective `{objective.name}` needs the reference's per-token log-probs or distributions, which precompute "
         "does not keep; use live or auto")
    need(d.spurious_bins >= 2, "data.spurious_bins", f"must be >= 2, got {d.spurious_bins}")
    need(d.num_proc is None or d.num_proc >= 1, "data.num_proc", f"must be >= 1 (or null: automatic), got {d.num_proc}")
    need(recipe.eval.suite is None or objective.kind in ("reward_pairs", "forget"), "eval.suite",
         "evaluation suites are for reward models (evals/reward.yaml) and unlearning (evals/unlearning*.yaml)")
    need(recipe.eval.num_prompts > 0 and recipe.eval.batch_size > 0 and recipe.eval.max_new_tokens > 0,
         "eval", "num_prompts, batch_size and max_new_tokens must be > 0")


SEARCH_KINDS = {"grid": "a list of values", "choice": "a list of values", "uniform": "[low, high]",
                "loguniform": "[low, high] with 0 < low < high"}


def check_sweep(recipe: Recipe, where) -> None:
    """Each swept key must be a recipe key, each search spec one of SEARCH_KINDS with a valid argument."""
    sw = recipe.sweep
    for key, spec in sw.space.items():
        origin = where(f"sweep.space.{key}")
        if key.startswith(("sweep.", "run.")):
            raise RecipeError(f"`sweep.space.{key}` in {origin}: run and sweep keys cannot be swept")
        sections = {n: c for n, c in typing.get_type_hints(Recipe).items()
                    if dataclasses.is_dataclass(c) and n not in ("run", "sweep")}
        section, _, name = key.partition(".")
        known = section in sections and bool(name) and (
            section == "objective" or name in {f.name for f in dataclasses.fields(sections[section])})
        if not known:  # objective parameters are checked when the trial recipes are built
            allowed = [f"{n}.{f.name}" for n, c in sections.items() if n != "objective" for f in dataclasses.fields(c)]
            raise RecipeError(_unknown_key_message(key, origin, allowed).replace("unknown key", "unknown swept key"))
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SEARCH_KINDS:
            raise RecipeError(f"`sweep.space.{key}` in {origin} must be one of "
                              + ", ".join(f"{{{k}: {v}}}" for k, v in SEARCH_KINDS.items()) + f"; got {spec!r}")
        kind, arg = next(iter(spec.items()))
        if not isinstance(arg, list) or not arg:
            raise RecipeError(f"`sweep.space.{key}.{kind}` in {origin} must be {SEARCH_KINDS[kind]}, got {arg!r}")
        if kind in ("uniform", "loguniform"):
            try:
                low, high = (float(x) for x in arg)
            except (TypeError, ValueError):
                raise RecipeError(f"`sweep.space.{key}.{kind}` in {origin} must be {SEARCH_KINDS[kind]}, "
                                  f"got {arg!r}") from None
            if not low < high or (kind == "loguniform" and low <= 0):
                raise RecipeError(f"`sweep.space.{key}.{kind}` in {origin} must be {SEARCH_KINDS[kind]}, "
                                  f"got {arg!r}")
    if sw.space and not sw.metric.startswith(("eval/", "gen/", "train/", "reward/", "online/")):
        raise RecipeError(f"`sweep.metric` in {where('sweep.metric')} must be an eval/, gen/, train/, online/ or "
                          "reward/<set>/<metric> metric")
    if sw.space and sw.scheduler == "pbt":
        _check_pbt(recipe, where)
    kinds = {next(iter(spec)) for spec in sw.space.values() if isinstance(spec, dict) and spec}
    if sw.space and sw.search == "grid" and kinds != {"grid"}:
        raise RecipeError(f"`sweep.search` in {where('sweep.search')}: grid needs every sweep.space entry to be a "
                          f"grid, got {sorted(kinds)}")
    if sw.space and sw.search in ("optuna", "hyperopt"):
        import importlib.util

        if "grid" in kinds:
            raise RecipeError(f"`sweep.search` in {where('sweep.search')}: {sw.search} samples its own points; "
                              "use choice instead of grid")
        if importlib.util.find_spec(sw.search) is None:
            raise RecipeError(f"`sweep.search` in {where('sweep.search')}: {sw.search} needs the {sw.search} "
                              f"package (pip install {sw.search})")
    if sw.num_samples < 1 or sw.max_concurrent_trials < 1 or sw.trial_cpus <= 0:
        raise RecipeError(f"`sweep` in {where('sweep')}: num_samples and max_concurrent_trials must be >= 1 and "
                          "trial_cpus > 0")


def _check_pbt(recipe: Recipe, where) -> None:
    """PBT restarts trials mid-run from another trial's checkpoint with mutated values: only values a resumed run
    can take (the learning rate's peak, objective parameters) may be swept, and it decides on in-training metrics at
    steps where a checkpoint and an evaluation coincide."""
    sw, t = recipe.sweep, recipe.trainer
    for key in sw.space:
        if key != "optim.lr" and not (key.startswith("objective.") and key != "objective.name"):
            raise RecipeError(f"`sweep.space.{key}` in {where(f'sweep.space.{key}')}: sweep.scheduler: pbt mutates "
                              "values in the middle of a run, which a resumed run can only take for optim.lr and "
                              f"objective parameters; sweep {key} with scheduler none or asha")
    if not sw.metric.startswith(("eval/", "train/")):
        raise RecipeError(f"`sweep.metric` in {where('sweep.metric')}: sweep.scheduler: pbt compares trials during "
                          f"training, so the metric must be an eval/ or train/ one, got {sw.metric}")
    if sw.metric.startswith("eval/") and not recipe.data.eval:  # PBT would wait for it, silently
        raise RecipeError(f"`sweep.metric` in {where('sweep.metric')}: {sw.metric} needs held-out data, and this "
                          "recipe sets no data.eval")
    if sw.search not in ("random", "grid"):
        raise RecipeError(f"`sweep.search` in {where('sweep.search')}: sweep.scheduler: pbt chooses the values "
                          f"itself; use search random or grid (the starting population), not {sw.search}")
    if not t.eval_every or sw.perturbation_interval <= 0 or sw.perturbation_interval % t.eval_every:
        raise RecipeError(f"`sweep.perturbation_interval` in {where('sweep.perturbation_interval')}: sweep.scheduler:"
                          " pbt needs a perturbation_interval > 0 that is a multiple of trainer.eval_every (> 0), "
                          f"got {sw.perturbation_interval} and eval_every {t.eval_every}")
    if t.num_epochs is None and sw.perturbation_interval >= t.max_steps:
        raise RecipeError(f"`sweep.perturbation_interval` in {where('sweep.perturbation_interval')}: "
                          f"{sw.perturbation_interval} steps leaves no perturbation before trainer.max_steps "
                          f"({t.max_steps})")
    population = sw.num_samples * math.prod(len(spec["grid"]) for spec in sw.space.values() if "grid" in spec)
    if population < 2 or sw.max_concurrent_trials < population:
        raise RecipeError(f"`sweep` in {where('sweep')}: sweep.scheduler: pbt needs a population of >= 2 trials "
                          f"running together (sweep.max_concurrent_trials >= the number of trials, {population})")


def recipe_to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (what `recipe.yaml` in a run directory holds)."""
    out = {}
    for f in dataclasses.fields(recipe):
        if f.metadata.get("internal"):
            continue
        value = getattr(recipe, f.name)
        if isinstance(value, ObjectiveConfig):
            out[f.name] = {"name": value.name, **value.params}
        else:
            out[f.name] = dataclasses.asdict(value)
    return out


def derive(recipe: Recipe, changes: dict[str, Any], source: str | None = None) -> Recipe:
    """A validated copy of `recipe` with `changes`: dotted keys (`trainer.max_steps`) set one value; a section name
    (`objective`, `sweep`) replaces the whole section. The one way code makes a recipe from another."""
    import copy

    data = copy.deepcopy(recipe_to_dict(recipe))
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if not name:
            data[section] = copy.deepcopy(value)
        else:
            data.setdefault(section, {})[name] = value
    return recipe_from_dict(data, source=source or recipe.source)


def dump_recipe(recipe: Recipe) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(recipe_to_dict(recipe)))


__all__ = ["load_recipe", "recipe_from_dict", "recipe_to_dict", "derive", "dump_recipe", "check_recipe",
           "AlignkitError"]
