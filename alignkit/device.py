"""The one seam between host memory and the device a model computes on. Every batch, reference table, auxiliary
tensor and model goes to its device through `place` / `place_model`, never through scattered `.to()` calls, so a
missing move is one missing call that a CPU test can catch: tests/device_check.py tags what passes through here
(`observers`) and fails on any operation that mixes a tagged tensor with an untagged one. Results come back to host
memory through `host`.

Imports nothing of alignkit: every layer uses it."""
from __future__ import annotations

import os
from collections.abc import Callable

import torch

from alignkit.errors import AlignkitError

# Called as observe(tensor, on_device) with every tensor `place` returns and every parameter and buffer
# `place_model` moves (on_device True), and every tensor `host` returns (False). For tests.
observers: list[Callable[[torch.Tensor, bool], None]] = []


def work_device(use_gpu: bool | None = None) -> torch.device:
    """Where this process computes. `use_gpu` None: a CUDA GPU when this process sees one (a Ray task or actor that
    reserved a GPU sees exactly it; one that reserved none sees none), else the CPU. True: the GPU of this worker,
    torch's current CUDA device (Ray Train sets it for each worker from the GPUs it reserved), or an error when
    there is none."""
    available = torch.cuda.is_available()
    if use_gpu is None:
        use_gpu = available
    if not use_gpu:
        return torch.device("cpu")
    if not available:
        raise AlignkitError("cluster.use_gpu is true but this process sees no CUDA GPU (CUDA_VISIBLE_DEVICES="
                            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!s}); set cluster.use_gpu: false to "
                            "train on CPUs")
    return torch.device("cuda", torch.cuda.current_device())


def place(obj, device: torch.device | str):
    """`obj` with every tensor in it (nested dicts, lists, tuples) on `device`; anything else unchanged."""
    if isinstance(obj, torch.Tensor):
        device = torch.device(device)
        # non_blocking only host -> GPU (device -> host non_blocking would hand out memory not yet written)
        moved = obj.to(device, non_blocking=device.type == "cuda" and obj.device.type == "cpu")
        if moved is obj and observers:  # already there (CPU): a new handle, so the host one stays a host tensor
            moved = obj.view_as(obj)
        for observe in observers:
            observe(moved, True)
        return moved
    if isinstance(obj, dict):
        return {k: place(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(place(v, device) for v in obj)
    return obj


def place_model(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """The model's parameters and buffers on `device` (in place; returns the model)."""
    model.to(device)
    if observers:
        for tensor in [*model.parameters(), *model.buffers()]:
            for observe in observers:
                observe(tensor, True)
    return model


def host(obj):
    """`obj` with every tensor in it detached and in host memory (a copy only where it was on a device)."""
    if isinstance(obj, torch.Tensor):
        out = obj.detach().cpu()
        for observe in observers:
            observe(out, False)
        return out
    if isinstance(obj, dict):
        return {k: host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host(v) for v in obj)
    return obj


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (DeepSpeed engines and HF models alike)."""
    return next(model.parameters()).device
