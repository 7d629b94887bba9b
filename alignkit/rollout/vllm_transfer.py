"""alignkit's CPU backend for vLLM's weight-transfer protocol: the worker side of rollout/weight_sync.py over a gloo
group. vLLM ships NCCL (GPU) backends only; this engine lets the same trainer -> engine push run, and be tested, on
CPU. Registered under `alignkit_gloo` in vLLM's `WeightTransferEngineFactory` by `register()`, which runs in every
vLLM process through alignkit's `vllm.general_plugins` entry point (pyproject.toml) and again before the vLLM
engine is built (rollout/vllm_engine.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

from alignkit.rollout.weight_sync import GLOO_BACKEND, open_gloo_group, receive_buckets


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    master_address: str
    master_port: int
    rank_offset: int  # this engine's first rank in the transfer group (the trainer is rank 0)
    world_size: int
    bucket_bytes: int
    timeout_s: float


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.group, self.bucket_bytes = None, 0

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        p = self.parallel_config
        rank = init_info.rank_offset + p.data_parallel_index * p.world_size + p.rank
        self.bucket_bytes = init_info.bucket_bytes
        self.group = open_gloo_group(init_info.master_address, init_info.master_port, rank, init_info.world_size,
                                     init_info.timeout_s)

    def start_weight_update(self) -> None:
        # vLLM's layerwise in-place reload: checkpoint-format tensors through the model's weight loaders, layers
        # re-processed at the end (on CPU the linear weights are repacked for oneDNN)
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict) -> None:
        self.receive_weights(self.parse_update_info(update_info))  # synchronous on CPU: no device sync needed

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("alignkit_gloo weight transfer: init_weight_transfer_engine was not called")
        with torch.no_grad():
            for pairs in receive_buckets(self.group, update_info.__dict__, self.bucket_bytes):
                self.model.load_weights(pairs)

    def shutdown(self) -> None:
        self.group = None


def register() -> None:
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if GLOO_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO_BACKEND, GlooWeightTransferEngine)
