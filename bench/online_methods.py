"""The three online methods on the persistent trainer (rejection sampling, online DPO, online PMPO; SmolLM2-135M,
exact-answer verifier on the built-in arithmetic prompts) against the offline quickstart DPO at an equal number of
training examples; one command, one table.

    python bench/online_methods.py [--only NAME ...] [--table-only] [extra a.b=c overrides for every run]

Online: 8 rounds x 2 optimizer steps x global batch 8 = 128 training examples (rows generated from 16 prompts x 4
samples per round). Offline DPO: 16 steps x global batch 8 = 128 pairs of the fixed data set. Held-out: greedy
answers to the 64 test prompts, scored by the data set's checker (format: "The answer is N."; correct: and N is
right). Each run is a normal `launch.py` run in runs/online_methods/<name>.
"""
from __future__ import annotations

import json
from pathlib import Path

import _runs  # bench/_runs.py: the shared run loop

RUNS = {
    "offline DPO (quickstart, 128 pairs)": ("recipes/quickstart.yaml", ["trainer.max_steps=16",
                                                                        "trainer.eval_every=8"]),
    "online rejection sampling": ("recipes/online/rejection_sampling_builtin.yaml", []),
    "online DPO (best vs worst of 4)": ("recipes/online/dpo_builtin.yaml", []),
    "online PMPO (verifier accept/reject)": ("recipes/online/pmpo_builtin.yaml", []),
}


def _offline(run_dir: Path) -> dict:
    b = json.loads((run_dir / "behaviour.json").read_text())
    return {"start": b["start"]["metrics"], "end": b["final"]["metrics"], "rows": 128}


def _online(run_dir: Path) -> dict:
    rounds = json.loads((run_dir / "rounds.json").read_text())
    evals = [r for r in rounds if "online/eval_format" in r]

    def gen(r):
        return {f"gen/{k}": r[f"online/eval_{k}"] for k in ("format", "correct", "any_correct", "words")}

    out = {"end": gen(evals[-1]), "curve": [(r["round"], r["online/eval_format"], r["online/eval_any_correct"])
                                           for r in evals],
           "score": [round(r["online/mean_score"], 2) for r in rounds if "online/mean_score" in r],
           "rows": sum(r.get("online/rows", 0) for r in rounds)}
    if evals[0]["round"] == -1:
        out["start"] = gen(evals[0])
    return out


def start_model(root: Path) -> dict:
    """The starting policy's held-out metrics with the online runs' evaluation settings (greedy, the online recipes'
    max_new_tokens, the exact-answer verifier and the data set's checker), from an HF engine in this process; cached
    in <root>/start_model.json. (Online runs now log this themselves at step 0; the ones in the README predate it.)"""
    path = root / "start_model.json"
    if not path.exists():
        from alignkit.config import load_recipe
        from alignkit.data.encode import EncodeSettings
        from alignkit.pipelines.online import validate
        from alignkit.rollout.hf import HFEngine
        from alignkit.rollout.rounds import RoundMaker

        recipe = load_recipe("recipes/online/pmpo_builtin.yaml")
        payload = validate(recipe)
        engine = HFEngine(recipe.model.path, batch_size=64)

        class Client:  # the engine in this process, behind the EngineClient interface
            generate = staticmethod(engine.generate)

        maker = RoundMaker(Client(), [], payload["eval_rows"], "unpaired", recipe.online, recipe.model.path,
                           EncodeSettings(), scorer=payload["scorer"])
        path.write_text(json.dumps(maker.evaluate()))
    m = json.loads(path.read_text())
    return {k.replace("online/eval_", "gen/"): v for k, v in m.items()}


def _cell(m: dict, key: str, digits: int = 2) -> str:
    before = f"{m['start'][key]:.{digits}f} → " if "start" in m else ""
    return f"{before}{m['end'][key]:.{digits}f}"


def table(root: Path) -> str:
    lines = ["| run | held-out format | held-out correct (format + number) | held-out right number (the verifier) | "
             "words | rollout mean score by round | training rows | wall s |", "|---|---|---|---|---|---|---|---|"]
    for name in RUNS:
        d = root / _runs.slug(name)
        if not (d / "report.md").exists():
            continue
        m = _offline(d) if (d / "behaviour.json").exists() else _online(d)
        wall = (d / "wall_s").read_text().strip() if (d / "wall_s").exists() else "?"
        scores = " ".join(str(s) for s in m.get("score", [])) or "—"
        lines.append(f"| {name} | {_cell(m, 'gen/format')} | {_cell(m, 'gen/correct')} | "
                     f"{_cell(m, 'gen/any_correct')} | {_cell(m, 'gen/words', 1)} | {scores} | {m['rows']} | {wall} |")
    start = start_model(root)
    lines.append(f"| starting model (greedy, 48 new tokens, as the online evaluations) | {start['gen/format']:.2f} | "
                 f"{start['gen/correct']:.2f} | {start['gen/any_correct']:.2f} | {start['gen/words']:.1f} | — | — | "
                 "— |")
    curves = []
    for name in RUNS:
        d = root / _runs.slug(name)
        if (d / "rounds.json").exists():
            curve = _online(d)["curve"]
            curves.append(f"- {name}: held-out (format, right number) after round " + ", ".join(
                f"{'start' if r == -1 else r}: ({f:.2f}, {c:.2f})" for r, f, c in curve))
    return "\n".join(lines + [""] + curves)


if __name__ == "__main__":
    _runs.main(__doc__, "runs/online_methods", RUNS, table)
