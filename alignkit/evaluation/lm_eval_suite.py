"""Evaluation suites of kind `lm_eval`: EleutherAI's lm-evaluation-harness on any checkpoint, so that WMDP, MMLU and
the harness's other tasks are scored with the harness's own prompts, few-shot settings and metrics — numbers that
compare with published ones (alignkit's own multiple-choice scorer, evaluation/unlearning.py, uses its own prompt).
Needs the `eval` extra: `pip install 'alignkit[eval]'`.

A suite file (evals/lm_eval_wmdp_mmlu.yaml):

    kind: lm_eval
    tasks: [wmdp_bio, mmlu]   # harness task or group names
    include_path: null        # a folder of your own task YAMLs (relative to the suite file), in the harness's format
    num_fewshot: null         # null: each task's own default
    limit: null               # items per task, for quick checks (the harness's --limit: not comparable to papers)
    batch_size: 8
    apply_chat_template: false
    dtype: float32            # the dtype the model is loaded in (bfloat16 on GPUs)

    alignkit eval lm_eval_wmdp_mmlu model.path=runs/npo/final --out runs/npo/lm_eval
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.errors import AlignkitError, RecipeError
from alignkit.paths import shipped

log = logging.getLogger(__name__)


@dataclass
class LmEvalSuite:
    tasks: list[str] = field(default_factory=list)
    include_path: str | None = None
    num_fewshot: int | None = None
    limit: int | None = None
    batch_size: int = 8
    apply_chat_template: bool = False
    dtype: str = "float32"
    kind: str = "lm_eval"
    # the harness's task index, built once by load_suite (indexing its ~15k task files takes seconds)
    manager: object = field(default=None, repr=False, compare=False)


def require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise AlignkitError("suite kind `lm_eval` needs lm-evaluation-harness: pip install 'alignkit[eval]' "
                            "(or pip install 'lm-eval[hf]')") from None
    return lm_eval


def load_suite(path: str, key: str = "alignkit eval SUITE") -> LmEvalSuite:
    """The suite file, validated: keys, types, and that every task name is one the harness (plus include_path)
    knows — before any model is loaded."""
    from omegaconf import OmegaConf

    path = str(shipped(path, "evals"))
    if not Path(path).is_file():
        raise RecipeError(f"evaluation suite {path} does not exist ({key})")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    allowed = {f.name for f in dataclasses.fields(LmEvalSuite)} - {"manager"}
    if set(raw) - allowed:
        raise RecipeError(f"{path}: unknown key(s) {sorted(set(raw) - allowed)}; allowed: {sorted(allowed)}")
    suite = LmEvalSuite(**raw)
    if isinstance(suite.tasks, str):
        suite.tasks = [suite.tasks]
    if not suite.tasks or not all(isinstance(t, str) for t in suite.tasks):
        raise RecipeError(f"{path}: `tasks` must be a non-empty list of lm-eval task names")
    for name in ("num_fewshot", "limit"):
        value = getattr(suite, name)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise RecipeError(f"{path}: `{name}` must be a non-negative integer or null, got {value!r}")
    if not isinstance(suite.batch_size, int) or suite.batch_size < 1:
        raise RecipeError(f"{path}: `batch_size` must be a positive integer, got {suite.batch_size!r}")
    if suite.include_path is not None:
        folder = (Path(path).parent / suite.include_path).resolve()
        if not folder.is_dir():
            raise RecipeError(f"{path}: include_path {folder} is not a folder")
        suite.include_path = str(folder)
    suite.manager = task_manager(suite)
    known = set(suite.manager.all_tasks)
    for task in suite.tasks:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RecipeError(f"{path}: lm-eval knows no task `{task}`{hint} (lm-eval --tasks list shows them; "
                              "your own task YAMLs go in the suite's include_path)")
    return suite


def task_manager(suite: LmEvalSuite):
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=suite.include_path) if suite.include_path else TaskManager()


def run_suite(model_path: str, suite: LmEvalSuite) -> dict:
    """{task: {metric: value, ..., "samples": n}} for the model at `model_path` (a folder, or builtin:<name>), on
    the GPU when there is one."""
    import torch

    lm_eval = require_lm_eval()
    from alignkit.models.loading import resolve_model_path

    if suite.limit is not None:
        log.warning("lm_eval suite: limit %d items per task: for quick checks, not comparable to published numbers",
                    suite.limit)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    output = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": resolve_model_path(model_path), "dtype": suite.dtype},
        tasks=list(suite.tasks), num_fewshot=suite.num_fewshot, limit=suite.limit, batch_size=suite.batch_size,
        device=device, task_manager=suite.manager or task_manager(suite), apply_chat_template=suite.apply_chat_template,
        log_samples=False)
    results = {}
    for task, metrics in output["results"].items():
        # the harness names metrics "<metric>,<filter>" ("acc,none", "acc_stderr,none")
        row = {name.split(",")[0]: value for name, value in metrics.items()
               if "," in name and isinstance(value, (int, float))}
        if task in output.get("n-samples", {}):
            row["samples"] = output["n-samples"][task].get("effective")
        results[task] = row
    return results


def results_table(results: dict) -> str:
    metrics = sorted({m for row in results.values() for m in row if not m.endswith("_stderr") and m != "samples"})
    lines = ["| task | " + " | ".join(metrics) + " | samples |", "|---" * (len(metrics) + 2) + "|"]
    for task, row in results.items():
        cells = []
        for m in metrics:
            value, err = row.get(m), row.get(f"{m}_stderr")
            cells.append("" if value is None else f"{value:.4f}" + (f" ± {err:.4f}" if isinstance(err, float) else ""))
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {row.get('samples', '')} |")
    return "\n".join(lines)
