"""The `alignkit` command (and `python launch.py`, its alias for `alignkit run`):

    alignkit run RECIPE [a.b=c ...] [--dry-run] [--sweep] [--debug]
    alignkit eval SUITE model.path=DIR [retain.path=DIR] [--out DIR] [--debug]
    alignkit list objectives | datasets | recipes | suites

RECIPE and SUITE are files, or the names of shipped ones (`alignkit run quickstart`, `alignkit run dpo/tiny_debug`,
`alignkit eval reward`), found from any directory after a plain `pip install`. Flags and overrides go in any order.
Every failure the user can fix is one `error:` line and exit code 2 (`--debug` shows the traceback)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHIPPED = {"recipe": PACKAGE / "recipes", "suite": PACKAGE / "evals"}
VERBS = ("run", "eval", "list")


def find_shipped(what: str, name: str) -> Path:
    """A file path as given, else the shipped recipe / suite of that name (with or without .yaml, with or without a
    leading recipes/ or evals/)."""
    from alignkit.paths import shipped

    found = shipped(name, SHIPPED[what].name)
    if found.is_file():
        return found
    from alignkit.errors import AlignkitError

    raise AlignkitError(f"{what} `{name}` is neither a file nor a shipped {what} (`alignkit list {what}s` shows "
                        "them)")


def shipped_files(what: str) -> list[tuple[str, str]]:
    """(name, first comment line) of every shipped recipe / suite; files starting with `_` are bases."""
    root = SHIPPED[what]
    out = []
    for path in sorted(root.rglob("*.yaml")):
        if path.name.startswith("_"):
            continue
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")),
                     "")
        out.append((str(path.relative_to(root).with_suffix("")), first))
    return out


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """One parser per verb (argparse's intermixed parsing, which lets flags and overrides mix, has no subparsers)."""
    run = argparse.ArgumentParser(prog="alignkit run", description="Run a recipe: train, evaluate, report.")
    run.add_argument("recipe", help="a recipe file or a shipped recipe's name (alignkit list recipes)")
    run.add_argument("overrides", nargs="*", help="recipe overrides, e.g. optim.lr=1e-5 trainer.max_steps=20")
    run.add_argument("--dry-run", action="store_true",
                     help="validate (recipe, model path, data sources and their rows) and print the resolved "
                          "recipe, then exit")
    run.add_argument("--sweep", action="store_true", help="run the recipe's `sweep:` section with Ray Tune")
    run.add_argument("--debug", action="store_true", help="show full tracebacks")
    ev = argparse.ArgumentParser(prog="alignkit eval",
                                 description="Evaluate a saved model with a suite (reward, unlearning or lm_eval).")
    ev.add_argument("suite", help="a suite file or a shipped suite's name (alignkit list suites)")
    ev.add_argument("settings", nargs="*", help="model.path=DIR (required); retain.path=DIR: the model never "
                                                "trained on the forget set (unlearning suites: forget quality, "
                                                "PrivLeak)")
    ev.add_argument("--out", default=None, help="write the results (JSON, plots) here")
    ev.add_argument("--debug", action="store_true", help="show full tracebacks")
    ls = argparse.ArgumentParser(prog="alignkit list", description="What alignkit ships.")
    ls.add_argument("what", choices=["objectives", "datasets", "recipes", "suites"])
    return {"run": run, "eval": ev, "list": ls}


USAGE = __doc__.split("\n\n")[0] + """

Shipped recipes: `alignkit list recipes`; objectives: `alignkit list objectives`; a verb's options: `alignkit VERB -h`.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in VERBS:
        argv = ["run", *argv]  # `python launch.py RECIPE ...`
    verb = argv[0]
    args = _parsers()[verb].parse_intermixed_args(argv[1:])  # flags and overrides in any order
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from alignkit.errors import run_command

    if verb == "list":
        return run_command(lambda _=None: list_things(args.what))
    body = run_recipe if verb == "run" else evaluate_suite
    return run_command(lambda _=None: body(args), debug=args.debug)  # AlignkitError: one `error:` line, exit 2


def run_recipe(args) -> int:
    from alignkit.config import dump_recipe, load_recipe
    from alignkit.errors import AlignkitError

    recipe = load_recipe(find_shipped("recipe", args.recipe), args.overrides)
    if args.dry_run:
        # what can be checked without loading weights or reading a hub dataset: model path, data record kinds
        from alignkit.models.loading import check_model_source
        from alignkit.pipelines.preference import check_data_kinds
        from alignkit.rundir import RunDirectory

        check_model_source(recipe.model.path, build=False)
        if recipe.online.rounds > 0:
            from alignkit.pipelines.online import validate, with_online_steps

            recipe = with_online_steps(recipe)
            validate(recipe, read_hub=False)
        elif recipe.steps.problems:
            from alignkit.pipelines.step_negatives import load_problems

            load_problems(recipe)
        else:
            check_data_kinds(recipe, read_hub=False)
        if not args.sweep:  # the run directory the run would write (a sweep writes <name>-sweep/)
            try:
                RunDirectory.of(recipe).refuse_if_taken()
            except AlignkitError as exc:  # valid recipe; said so the user is not surprised by the real run
                print(f"warning: the run would stop: {exc}", file=sys.stderr)
        sys.stdout.write(dump_recipe(recipe))
        print(f"# global batch = {recipe.trainer.micro_batch_size} x {recipe.trainer.grad_accum} x "
              f"{recipe.cluster.num_workers} = {recipe.global_batch_size}; output: {recipe.output_dir}")
        return 0
    from alignkit.pipelines import run_pipeline

    if args.sweep:
        from alignkit.distributed.tune import run_sweep

        out = run_sweep(recipe, run_pipeline)
        print(f"done: {out}/results.md (best recipe: {out}/best_recipe.yaml)")
        return 0
    out = run_pipeline(recipe)
    print(f"done: {out}/report.md")
    return 0


def suite_kind(path: Path) -> str:
    """`kind:` of a suite file, else what its keys say (reward suites have fillers / max_pairs / calibration)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(path)) or {}
    if "kind" in raw:
        return raw["kind"]
    return "reward" if {"fillers", "max_pairs", "calibration_bins"} & set(raw) else "unlearning"


def evaluate_suite(args) -> int:
    import json

    from alignkit.errors import AlignkitError
    from alignkit.models.loading import check_model_source

    suite = find_shipped("suite", args.suite)
    settings = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or key not in ("model.path", "retain.path"):
            raise AlignkitError(f"alignkit eval takes model.path=DIR and retain.path=DIR, got `{item}`")
        settings[key] = value
    if "model.path" not in settings:
        raise AlignkitError("alignkit eval needs model.path=DIR (a saved model, e.g. runs/<name>/final)")
    kind = suite_kind(suite)
    model, retain = settings["model.path"], settings.get("retain.path")
    out = Path(args.out) if args.out else None
    if kind == "reward":
        from alignkit.evaluation import reward as rw

        if retain:
            raise AlignkitError("retain.path is for unlearning suites; a reward suite scores one model")
        loaded = rw.load_suite(str(suite), key="alignkit eval SUITE")  # checked before any model loads
        check_model_source(model)
        results = rw.run_suite(model, loaded)
        print(rw.results_table(results))
        if out:
            out.mkdir(parents=True, exist_ok=True)
            (out / "reward_eval.json").write_text(json.dumps(results, indent=1))
            rw.calibration_plot(results, out / "calibration.png")
        return 0
    if kind == "lm_eval":
        from alignkit.evaluation import lm_eval_suite as le

        if retain:
            raise AlignkitError("retain.path is for unlearning suites; an lm_eval suite scores one model")
        loaded = le.load_suite(str(suite))  # tasks checked before any model loads
        check_model_source(model)
        results = le.run_suite(model, loaded)
        print(le.results_table(results))
        if out:
            out.mkdir(parents=True, exist_ok=True)
            (out / "lm_eval.json").write_text(json.dumps({"model": model, "suite": str(suite), "results": results},
                                                         indent=1))
        return 0
    if kind != "unlearning":
        raise AlignkitError(f"{suite}: suite kind `{kind}`; alignkit eval knows reward, unlearning and lm_eval "
                            "suites")
    from alignkit.evaluation import unlearning as ue

    loaded = ue.load_suite(str(suite), key="alignkit eval SUITE")
    models = {"retain": retain} if retain else {}
    models[Path(model).name if Path(model).name != "final" else Path(model).parent.name] = model
    for path in models.values():  # every model path before the first is loaded
        check_model_source(path)
    rows = ue.evaluate_paths(models, ue.read_suite_sets(loaded), retain="retain" if retain else None,
                             max_new_tokens=loaded.max_new_tokens, batch_size=loaded.batch_size)
    print(ue.results_table(rows))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "unlearning_eval.json").write_text(json.dumps({"models": models, "metrics": rows}, indent=1))
    return 0


def list_things(what: str) -> int:
    if what == "objectives":
        from alignkit.objectives.registry import _REGISTRY, _load_builtin_objectives

        _load_builtin_objectives()
        for name, objective in sorted(_REGISTRY.items()):
            doc = (objective.doc or objective.loss_fn.__doc__ or "").strip().splitlines()
            print(f"{name:14s} {objective.kind:13s} {doc[0] if doc else ''}")
    elif what == "datasets":
        from alignkit.data.builtin import BUILTIN_DATASETS

        for name, (generate, kind, _) in BUILTIN_DATASETS.items():
            doc = (generate.__doc__ or "").strip().splitlines()
            print(f"builtin:{name:22s} {kind:13s} {doc[0] if doc else ''}")
    else:
        for name, doc in shipped_files("recipe" if what == "recipes" else "suite"):
            print(f"{name:36s} {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
