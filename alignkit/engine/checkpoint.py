"""Checkpoint I/O of the loop: what an exact resume needs, written by every rank into the directory a runner gives
(Ray Train's checkpoint upload, or a local folder in tests)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from alignkit.engine.reference import PrecomputedReference


def save_state(backend, directory: Path, step: int, tokens_seen: int, rank: int, references: dict,
               source_state: dict | None = None) -> None:
    """Everything an exact resume needs: model, optimizer and scheduler (via the backend), this rank's RNG states,
    and on rank 0 the step (the data position is derived from it), precomputed reference log-probs and the batch
    source's state (an online run's round and its rows)."""
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(directory)
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
                "cuda": torch.cuda.get_rng_state() if backend.device.type == "cuda" else None},
               directory / f"rng_rank{rank}.pt")
    if rank == 0:
        torch.save({k: v.state() for k, v in references.items() if isinstance(v, PrecomputedReference)},
                   directory / "reference_logps.pt")
        (directory / "trainer_state.json").write_text(json.dumps({"step": step, "tokens_seen": tokens_seen}))
        if source_state:
            torch.save(source_state, directory / "source_state.pt")


def saved_references(directory: Path) -> dict[str, PrecomputedReference]:
    path = directory / "reference_logps.pt"
    saved = torch.load(path, map_location="cpu") if path.exists() else {}
    return {k: PrecomputedReference(v["table"], v["known"]) for k, v in saved.items()}


def load_state(backend, directory: Path, rank: int) -> tuple[int, int]:
    state = json.loads((directory / "trainer_state.json").read_text())
    backend.load(directory)
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.exists():  # absent when resuming on more workers than wrote the checkpoint
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        if rng.get("cuda") is not None and backend.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])
    return state["step"], state["tokens_seen"]


def _truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, keep the metric lines up to the checkpoint's step, so the curve continues without duplicates."""
    if path.exists():
        lines = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= last_step]
        path.write_text("".join(x + "\n" for x in lines))
