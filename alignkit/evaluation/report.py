"""The run report: report.md (what changed on held-out data, with sample generations) and PNG plots of the curves."""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict], out_dir: Path) -> list[str]:
    """One PNG per metric group: train curves and held-out eval curves. Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for prefix, name in (("train/", "train_curves.png"), ("eval/", "eval_curves.png")):
        keys = sorted({k for r in records for k in r if k.startswith(prefix)} - {
            "train/tokens", "train/lr", "train/tokens_per_s", "train/grad_norm"})
        if not keys:
            continue
        cols = min(3, len(keys))
        rows = (len(keys) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 20 else None)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        written.append(name)
    return written


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _cell(text: str, limit: int = 90) -> str:
    text = text.replace("\n", " ⏎ ").replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + "…"


def write_report(out_dir: Path, summary: dict, behaviour: dict | None, sample_prompts: list[str],
                 sections: list[str] = ()) -> Path:
    """summary: facts of the run (title, recipe facts, timings). behaviour: {"start": ..., "final": ...} evals.
    sections: more Markdown (e.g. a pipeline's own evaluation), placed before the curves."""
    records = read_metrics(out_dir / "metrics.jsonl")
    plots = plot_curves(records, out_dir)
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    lines = [f"# {summary['title']}", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary["facts"].items()]
    lines.append("")
    table = []
    if len(evals) >= 1:
        first, last = evals[0], evals[-1]
        for key in sorted(k for k in last if k.startswith("eval/")):
            table.append((f"held-out {key.removeprefix('eval/')}", first.get(key), last.get(key)))
        for a, b in (("accepted", "rejected"), ("chosen", "rejected")):
            ka, kb = f"eval/logps/{a}", f"eval/logps/{b}"
            if ka in last and kb in last:
                before = first[ka] - first[kb] if ka in first and kb in first else None
                table.append((f"held-out log-prob margin ({a} − {b})", before, last[ka] - last[kb]))
    if behaviour:
        start, final = behaviour.get("start") or {}, behaviour["final"]
        for key in sorted(final["metrics"]):
            table.append((f"generations: {key.removeprefix('gen/')}", start.get("metrics", {}).get(key),
                          final["metrics"][key]))
    if table:
        lines += ["## Held-out results: start vs after training", "",
                  f"Starting model (step 0) vs the trained model (step {records[-1]['step'] if records else '?'}).",
                  "", "| metric | start | after | change |", "|---|---|---|---|"]
        for name, before, after in table:
            change = _fmt(after - before) if isinstance(before, float) and isinstance(after, float) else "—"
            lines.append(f"| {name} | {_fmt(before)} | {_fmt(after)} | {change} |")
        lines.append("")
    if behaviour and behaviour["final"]["completions"]:
        start = behaviour.get("start") or {}
        lines += ["## Sample held-out generations (greedy)", "", "| prompt | start | after |", "|---|---|---|"]
        for i, prompt in enumerate(sample_prompts[:8]):
            before = start.get("completions", [""] * (i + 1))[i] if start else ""
            lines.append(f"| {_cell(prompt, 60)} | {_cell(before)} | {_cell(behaviour['final']['completions'][i])} |")
        lines.append("")
    lines += [*sections]
    if plots:
        lines += ["## Curves", ""] + [f"![{p}]({p})" for p in plots] + [""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
