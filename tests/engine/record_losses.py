"""Record the per-step losses of a few fixed recipes (one per record kind, in-process, tiny-llama, torch backend)
into tests/engine/recorded_losses.json. Run on the code *before* an engine refactor; test_recorded_losses.py then
asserts the refactored code gives the same losses:

    git worktree add /tmp/before <commit> && PYTHONPATH=/tmp/before python tests/engine/record_losses.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

CASES = {
    "dpo (pairs, precomputed reference)": ("pairs", "builtin:concise_arithmetic", "train", {"name": "dpo", "beta": 0.1},
                                           {}),
    "pmpo (unpaired from pairs, live reference)": ("unpaired", "builtin:concise_arithmetic", "train",
                                                   {"name": "pmpo", "beta": 0.5}, {}),
    "sft": ("sft", "builtin:concise_arithmetic", "train", {"name": "sft"}, {}),
    "npo_rt (forget + retain)": ("forget", "builtin:fictitious_authors", "forget01", {"name": "npo_rt"},
                                 {"retain": "builtin:fictitious_authors", "retain_split": "retain90"}),
    "reward_bt (reward pairs)": ("reward_pairs", "builtin:spurious_length", "train", {"name": "reward_bt"}, {}),
}


def losses(name: str, out: Path) -> list[float]:
    from alignkit.config import recipe_from_dict
    from alignkit.data.encode import EncodeSettings
    try:
        from alignkit.kinds import encode_rows, load_records
    except ImportError:  # the code before record kinds became modules (where the losses were recorded)
        from alignkit.data.encode import encode_rows
        from alignkit.data.sources import load_records
    from alignkit.engine.loop import TrainData, train
    from alignkit.kinds import encode_rows, load_records
    from alignkit.models.loading import load_tokenizer

    kind, source, split, objective, extra = CASES[name]
    recipe = recipe_from_dict({
        "run": {"output_dir": str(out)}, "model": {"path": "builtin:tiny-llama"},
        "data": {"train": source, "train_split": split, "max_length": 96, "max_prompt_length": 64, **extra},
        "objective": objective, "optim": {"lr": 1e-3},
        "trainer": {"backend": "torch", "max_steps": 3, "micro_batch_size": 2, "progress_bar": False}})
    tokenizer = load_tokenizer("builtin:tiny-llama")
    s = EncodeSettings(96, 64)
    rows = load_records(source, split, kind, limit=16).rows
    if kind == "reward_pairs":
        from alignkit.data.spurious import assign_bins, attribute_values, fit_binning

        encoded, _ = encode_rows(tokenizer, rows, kind, s)
        z = attribute_values(encoded, "length", source)
        assign_bins(encoded, z, fit_binning([v for pair in z for v in pair], 4))
    else:
        encoded, _ = encode_rows(tokenizer, rows, kind, s)
    retain = []
    if "retain" in extra:
        retain, _ = encode_rows(tokenizer, load_records(extra["retain"], extra["retain_split"], "forget", limit=8).rows,
                                "forget", s)
    train(recipe, TrainData(kind, encoded, [], tokenizer.pad_token_id, retain), out)
    return [json.loads(x)["train/loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    recorded = {}
    for name in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            recorded[name] = losses(name, Path(tmp))
            print(name, recorded[name], file=sys.stderr)
    path = Path(__file__).with_name("recorded_losses.json")
    path.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {path}")
