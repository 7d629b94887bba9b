"""`python launch.py RECIPE [a.b=c ...] [--dry-run] [--debug]`: validate a recipe, then run its pipeline."""
from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch.py", description="Run an alignkit recipe.")
    parser.add_argument("recipe", help="path to a recipe YAML file")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. optim.lr=1e-5 trainer.max_steps=20")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the resolved recipe, then exit")
    parser.add_argument("--sweep", action="store_true", help="run the recipe's `sweep:` section with Ray Tune")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from alignkit.errors import AlignkitError, run_command

    def body(_argv=None) -> int:
        from alignkit.config import dump_recipe, load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
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
        if args.sweep:
            from alignkit.distributed.tune import run_sweep
            from alignkit.pipelines import run_pipeline

            out = run_sweep(recipe, run_pipeline)
            print(f"done: {out}/results.md (best recipe: {out}/best_recipe.yaml)")
            return 0
        from alignkit.pipelines import run_pipeline

        out = run_pipeline(recipe)
        print(f"done: {out}/report.md")
        return 0

    return run_command(body, debug=args.debug)  # an AlignkitError: one `error:` line, exit code 2


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sys.exit(main())
