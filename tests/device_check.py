"""A CPU check that every tensor reaches the model's device through alignkit's one seam (alignkit/device.py).

On a CPU-only machine every tensor is on the CPU, so a missing move cannot fail by itself. This check gives the seam
its own "device": a tensor is *on the device* when it came out of `place` / `place_model` (the seam's observers tag
it), or was computed from such a tensor, or was made by a factory (zeros, arange, torch.tensor, ...) inside
device-side code (the model, the objectives), which takes its device from its inputs. Every other tensor is in host
memory, including what `host()` returns. Any operation that mixes a device tensor with a host tensor (other than a
0-dim scalar, which CUDA accepts too, an empty tensor, or a copy, which is a transfer) is a missing move: on a GPU
it would fail with "Expected all tensors to be on the same device". A TorchDispatchMode sees every aten operation,
below autograd, so nothing escapes it: model forwards, losses, reference tables, generation.

    with DeviceCheck() as check:
        train(...)
    check.assert_clean()
"""
from __future__ import annotations

import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import alignkit.device

# Code that makes new tensors on its inputs' device (device=x.device); factories elsewhere make host tensors
# (tokenizers make host tensors too).
DEVICE_SIDE = ("transformers.", "alignkit.objectives.")
HOST_SIDE = ("transformers.tokenization", "transformers.feature_extraction", "transformers.processing")
TRANSFERS = {"aten.copy_.default", "aten._to_copy.default"}


class DeviceCheck(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.on_device: set[int] = set()
        self.violations: list[str] = []
        self.placed = 0

    # ------------------------------------------------------------------------------------------------ tagging
    def _tag(self, tensor: torch.Tensor, on_device: bool) -> None:
        key = id(tensor)
        if on_device and key not in self.on_device:
            self.on_device.add(key)
            weakref.finalize(tensor, self.on_device.discard, key)
        elif not on_device:
            self.on_device.discard(key)

    def _observe(self, tensor: torch.Tensor, on_device: bool) -> None:
        self.placed += on_device
        self._tag(tensor, on_device)

    def __enter__(self):
        alignkit.device.observers.append(self._observe)
        return super().__enter__()

    def __exit__(self, *exc):
        alignkit.device.observers.remove(self._observe)
        return super().__exit__(*exc)

    # ------------------------------------------------------------------------------------------------ checking
    @staticmethod
    def _caller_is_device_side() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if not module.startswith(("torch", __name__)):
                return module.startswith(DEVICE_SIDE) and not module.startswith(HOST_SIDE)
            frame = frame.f_back
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        flags = [id(t) in self.on_device for t in tensors]
        if any(flags) and str(func) not in TRANSFERS:
            stray = [t for t, on in zip(tensors, flags) if not on and t.dim() > 0 and t.numel() > 0]
            if stray:
                self.violations.append(
                    f"{func}: host tensor(s) {[tuple(t.shape) for t in stray]} meet device tensor(s) "
                    f"{[tuple(t.shape) for t, on in zip(tensors, flags) if on]}\n{_where()}")
        # torch.tensor(data, device=x.device) is a lift_fresh of a new host tensor: a factory too
        factory = not tensors or str(func).startswith("aten.lift_fresh")
        if any(flags) or (factory and self._caller_is_device_side()):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self._tag(t, True)
        return out

    def assert_clean(self) -> None:
        assert self.placed, "nothing went through the device seam"
        assert not self.violations, (f"{len(self.violations)} operation(s) mix host and device tensors; the "
                                     f"first:\n{self.violations[0]}")


def _where() -> str:
    """The innermost alignkit frames of the current stack (where the unplaced tensor came in)."""
    frames, frame = [], sys._getframe(2)
    while frame is not None and len(frames) < 4:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("alignkit"):
            frames.append(f"  {module}:{frame.f_lineno} in {frame.f_code.co_name}")
        frame = frame.f_back
    return "\n".join(frames)
