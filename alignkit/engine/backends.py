"""How the one training loop wraps model and optimizer: `deepspeed` (ZeRO 0-3, bf16) or `torch` (one process, for
debugging and fast tests). Both expose the same calls: forward via `.module(...)`, `backward(loss)` once per
micro-batch, `step()` once per micro-batch (the optimizer steps on accumulation boundaries), `lr()`, and the device
seam: `.device` (the worker's GPU under GPU workers, else cpu) and `place(tensors)`, through which every batch,
reference table and auxiliary tensor reaches the model (alignkit/device.py)."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from alignkit.config.schema import Recipe
from alignkit.device import host, place, place_model, work_device

log = logging.getLogger(__name__)


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    o = recipe.optim
    # A torch optimizer, not DeepSpeed's FusedAdam/cpu_adam: those JIT-compile for about a minute on first use.
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr, betas=tuple(o.betas),
                             eps=o.eps, weight_decay=o.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's schedule as transformers computes it (what TRL and the HF Trainer use)."""
    from transformers import get_scheduler

    o = recipe.optim
    return get_scheduler(o.scheduler, optimizer, num_warmup_steps=o.warmup_steps,
                         num_training_steps=recipe.trainer.max_steps,
                         scheduler_specific_kwargs=dict(o.scheduler_kwargs) or None)


class Placement:
    """The device seam of a backend, and the weights it exports."""
    device: torch.device
    lora_scaling: float | None = None  # alpha / r of a LoRA run: exports merge the adapters

    def state_dict_for_export(self, raw: bool = False) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0 (None elsewhere), under the plain model's names with any LoRA adapters merged in
        (what the rollout engines and `final/` take); `raw`: the module's own state dict. Call on every rank."""
        state = self._full_state()
        if raw or state is None or self.lora_scaling is None:
            return state
        from alignkit.models.lora import merged_state

        return merged_state(state, self.lora_scaling)

    def place(self, obj):
        return place(obj, self.device)

    def rebase_lr(self, lr: float) -> float | None:
        """Continue a restored schedule from the peak `lr` instead of the checkpoint's (its shape and position
        kept): how a resumed run takes a changed optim.lr, e.g. a PBT trial's mutated one. Returns the old peak, or
        None when it was already `lr`. The scheduler's optimizer groups are the ones every step uses (DeepSpeed's
        ZeRO optimizer wraps the same groups)."""
        scheduler = self.scheduler
        old = scheduler.base_lrs[0]
        if old == lr:
            return None
        scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
        lrs = [lr * fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]
        for group, value in zip(scheduler.optimizer.param_groups, lrs):
            group["initial_lr"], group["lr"] = lr, value
        scheduler._last_lr = lrs
        return old

    def place_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return place_model(model, self.device)


class TorchBackend(Placement):
    def __init__(self, model: torch.nn.Module, recipe: Recipe, device: torch.device):
        self.device = device
        self.module = place_model(model, device)  # before the optimizer: its state lives where the parameters do
        self.optimizer = make_optimizer(model, recipe)
        self.scheduler = make_scheduler(self.optimizer, recipe)
        self.grad_accum = recipe.trainer.grad_accum
        self.max_grad_norm = recipe.optim.max_grad_norm
        self.autocast = recipe.trainer.precision == "bf16"
        self._micro = 0
        self.last_grad_norm = float("nan")

    def forward_context(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> bool:
        """Returns True when this call stepped the optimizer."""
        self._micro += 1
        if self._micro % self.grad_accum:
            return False
        if self.max_grad_norm > 0:
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def skip_micro_batch(self) -> None:
        """A micro-batch whose loss was not finite: no gradient from it, but the accumulation count moves on."""
        self.step()

    def save(self, directory: Path) -> None:
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "micro": self._micro}, directory / "torch_state.pt")

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "torch_state.pt", weights_only=False, map_location=self.device)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._micro = state["micro"]

    def _full_state(self) -> dict[str, torch.Tensor]:
        return host(self.module.state_dict())  # host memory, as the DeepSpeed path (pushes go through Ray)


class DeepSpeedBackend(Placement):
    def __init__(self, model: torch.nn.Module, recipe: Recipe, device: torch.device):
        import deepspeed

        t = recipe.trainer
        # DeepSpeed puts the model on its accelerator's current device: ours. Under ZeRO-3 (and parameter offload)
        # it moves and partitions one parameter at a time, so the whole model must not be placed here first.
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.device = device
        if t.zero_stage < 3 and not t.offload_params:
            place_model(model, device)
        config = {
            "train_micro_batch_size_per_gpu": t.micro_batch_size,
            "gradient_accumulation_steps": t.grad_accum,
            "train_batch_size": recipe.global_batch_size,
            "gradient_clipping": recipe.optim.max_grad_norm,
            "zero_optimization": {"stage": t.zero_stage,
                                  **({"offload_optimizer": {"device": "cpu"}} if t.offload_optimizer else {}),
                                  **({"offload_param": {"device": "cpu"}} if t.offload_params else {})},
            "bf16": {"enabled": t.precision == "bf16"},
            # Offload keeps alignkit's torch AdamW (DeepSpeed would otherwise insist on its JIT-built CPU Adam).
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 10**9,  # alignkit logs itself
            "wall_clock_breakdown": False,
        }
        optimizer = make_optimizer(model, recipe)
        scheduler = make_scheduler(optimizer, recipe)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config, dist_init_required=False)
        self.module = self.engine
        self.zero_stage = t.zero_stage
        self.last_grad_norm = float("nan")

    def forward_context(self):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if boundary:
            norm = self.engine.get_global_grad_norm()
            self.last_grad_norm = float(norm) if norm is not None else float("nan")
        return boundary

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def skip_micro_batch(self) -> None:
        """A micro-batch whose loss was not finite on some worker: every worker skips its backward; the engine's
        step still runs so the accumulation boundary stays where the recipe puts it."""
        self.step()

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag="engine")  # collective: every rank writes its shards

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag="engine", load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            from alignkit.errors import AlignkitError

            raise AlignkitError(f"no DeepSpeed checkpoint under {directory}/engine")

    def _full_state(self) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0 (None elsewhere); call on every rank. ZeRO-3 shards are gathered one parameter at a
        time and copied to CPU, so no device ever holds the whole model at once."""
        model = self.engine.module
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if self.zero_stage != 3:
            # Copies: under ZeRO the parameters are views into one flat buffer, and pickling a view (a push through
            # Ray's object store) serialises the whole buffer once per parameter (measured: 1.6-3.8 s instead of
            # 0.3 s per push of tiny-llama).
            return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if rank == 0 else None
        import deepspeed

        state = {}
        for name, param in model.named_parameters():
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if rank == 0:
                    state[name] = param.detach().cpu().clone()
        if rank == 0:
            persistent = set(model.state_dict().keys())  # non-persistent buffers (rotary tables) are not saved
            state.update({n: b.detach().cpu() for n, b in model.named_buffers() if n in persistent})
        return state if rank == 0 else None


def make_backend(model: torch.nn.Module, recipe: Recipe, device: torch.device | None = None):
    """`device`: where to train (default: the worker's GPU with cluster.use_gpu, else cpu)."""
    device = device if device is not None else work_device(recipe.cluster.use_gpu)
    cls = DeepSpeedBackend if recipe.trainer.backend == "deepspeed" else TorchBackend
    backend = cls(model, recipe, device)
    if recipe.model.lora is not None:
        backend.lora_scaling = recipe.model.lora.alpha / recipe.model.lora.r
    return backend
