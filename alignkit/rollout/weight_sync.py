"""Weight sync from the trainer to the vLLM engines through a collective: the trainer (rank 0 of the transfer group)
broadcasts the weights in buckets, every vLLM worker receives them through vLLM's own weight-transfer protocol
(`init_weight_transfer_engine` -> `start_weight_update` -> `update_weights` -> `finish_weight_update`) and loads them
with its layerwise in-place reload.

- GPU: vLLM's native NCCL backend (`NCCLTrainerWeightTransferEngine`, packed buckets on CUDA streams).
- CPU: the same protocol over a gloo group; the worker side is alignkit's `alignkit_gloo` engine, registered in
  vLLM's weight-transfer factory (rollout/vllm_transfer.py).

Both sides cut the stream into the same buckets (`plan_buckets`), and the group has a timeout, so a peer that dies or
never joins turns into a RolloutError after `rollout.sync_timeout_s` instead of a silent hang (the pain point of
hand-rolled NCCL syncs, spec/anchors.md). A transfer group lives for one push: each push opens it, sends, and closes
it, so a trainer process that is new every round (Ray Train workers) can push too.

`CollectiveSync` is picklable: the online loop hands it to the Ray Train workers, and rank 0 pushes the weights it
has just gathered (ZeRO-3 shards included, engine/backends.py) straight to the engines, without a disk round trip.
"""
from __future__ import annotations

import datetime
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

GLOO_BACKEND = "alignkit_gloo"  # the name of alignkit's CPU engine in vLLM's weight-transfer factory


def plan_buckets(dtype_names: list[str], shapes: list[list[int]], bucket_bytes: int) -> list[list[int]]:
    """Parameter indices per bucket: consecutive parameters of one dtype, at most `bucket_bytes` each (a parameter
    larger than that is a bucket of its own). Sender and receivers compute the same plan from the same metadata."""
    buckets, current, size, dtype = [], [], 0, None
    for i, (name, shape) in enumerate(zip(dtype_names, shapes)):
        nbytes = _numel(shape) * torch.empty((), dtype=getattr(torch, name)).element_size()
        if current and (name != dtype or size + nbytes > bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
        dtype = name
    if current:
        buckets.append(current)
    return buckets


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def update_info(state: dict[str, torch.Tensor]) -> dict:
    """What the receivers need to size their buffers: names, dtypes, shapes, in sending order."""
    names = list(state)
    return {"names": names, "dtype_names": [str(state[n].dtype).removeprefix("torch.") for n in names],
            "shapes": [list(state[n].shape) for n in names]}


def with_tied_lm_head(weights: dict, tied: bool) -> dict:
    """vLLM's in-place reload re-creates the embedding's weight, so a tied lm_head left out of a state dict (as
    save_pretrained leaves it out) would keep the old weights: it is sent explicitly."""
    if tied and "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights:
        return {**weights, "lm_head.weight": weights["model.embed_tokens.weight"]}
    return weights


def open_gloo_group(host: str, port: int, rank: int, world_size: int, timeout_s: float):
    """A gloo process group of its own (a TCPStore rendezvous, rank 0 hosts it): independent of any default group
    the trainer or vLLM already has. Every collective on it fails after `timeout_s` instead of waiting forever."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
    return dist.ProcessGroupGloo(store, rank, world_size, timeout)


def gloo_broadcast(group, tensor: torch.Tensor) -> None:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    group.broadcast([tensor], opts).wait()


def send_buckets(group, state: dict[str, torch.Tensor], info: dict, bucket_bytes: int) -> int:
    """Sender: one flat tensor per bucket. Returns the bytes sent."""
    sent = 0
    for bucket in plan_buckets(info["dtype_names"], info["shapes"], bucket_bytes):
        flat = torch.cat([state[info["names"][i]].detach().reshape(-1).cpu() for i in bucket])
        gloo_broadcast(group, flat)
        sent += flat.numel() * flat.element_size()
    return sent


def receive_buckets(group, info: dict, bucket_bytes: int):
    """Receiver: yields [(name, tensor)] per bucket, in the sender's order."""
    for bucket in plan_buckets(info["dtype_names"], info["shapes"], bucket_bytes):
        dtype = getattr(torch, info["dtype_names"][bucket[0]])
        sizes = [_numel(info["shapes"][i]) for i in bucket]
        flat = torch.empty(sum(sizes), dtype=dtype)
        gloo_broadcast(group, flat)
        yield [(info["names"][i], part.view(info["shapes"][i]))
               for i, part in zip(bucket, torch.split(flat, sizes))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # not in a Ray process
        return "127.0.0.1"


@dataclass
class CollectiveSync:
    """Pushes weights from this process (rank 0) to every worker of `actors` (rollout EngineActors, vLLM backend).
    `device`: cpu -> gloo, cuda -> vLLM's NCCL backend."""
    actors: list
    device: str = "cpu"
    bucket_bytes: int = 256 << 20
    timeout_s: float = 300.0
    workers_per_engine: list[int] = field(default_factory=list)
    wake_first: bool = False  # colocated engines sleep while the trainer trains: wake them before the push

    def _rpc(self, refs, what: str):
        from alignkit.rollout.engine import get_from_engines

        return get_from_engines(refs, f"weight sync ({what})", self.timeout_s, "sync_timeout_s",
                                ": an engine is hung or cannot reach the trainer")

    def _call(self, method: str, *args, **kwargs) -> list:
        return [a.transfer.remote(method, *args, **kwargs) for a in self.actors]

    def _init_infos(self, host: str, port: int, world: int, extra: dict) -> list[dict]:
        offsets, offset = [], 1  # the trainer is rank 0; engine e's workers follow the engines before it
        for n in self.workers_per_engine:
            offsets.append(offset)
            offset += n
        return [{"master_address": host, "master_port": port, "rank_offset": o, "world_size": world, **extra}
                for o in offsets]

    def send(self, state: dict[str, torch.Tensor]) -> dict:
        """Push `state` (full weights in checkpoint format: HF names) to all engines. Returns timings."""
        from alignkit.rollout.engine import RolloutError

        if self.wake_first:
            self._rpc([a.wake.remote() for a in self.actors], "wake")
        described = self._rpc(self._call("describe"), "describe the engines")
        if not self.workers_per_engine:
            self.workers_per_engine = [int(d["workers"]) for d in described]
        state = with_tied_lm_head(state, described[0]["tied_lm_head"])
        start = time.perf_counter()
        host, port, world = _node_ip(), _free_port(), 1 + sum(self.workers_per_engine)
        try:
            if self.device == "cpu":
                self._send_gloo(state, host, port, world)
            else:
                self._send_nccl(state, host, port, world)
        except RolloutError:
            raise
        except Exception as exc:  # the collective's own timeout or a dead peer
            raise RolloutError(f"weight sync to {len(self.actors)} engine(s) failed: {exc}") from exc
        versions = self._rpc(self._call("finish"), "finish")
        seconds = time.perf_counter() - start
        sent = sum(t.numel() * t.element_size() for t in state.values())
        log.info("rollout: %.1f MB pushed to %d engine(s) (%d workers) over %s in %.2f s", sent / 1e6,
                 len(self.actors), world - 1, "gloo" if self.device == "cpu" else "nccl", seconds)
        return {"seconds": seconds, "version": versions[0], "bytes": sent}

    def _send_gloo(self, state: dict, host: str, port: int, world: int) -> None:
        from alignkit.rollout.engine import RolloutError

        infos = self._init_infos(host, port, world, {"bucket_bytes": self.bucket_bytes, "timeout_s": self.timeout_s})
        joined = [a.transfer.remote("init", info) for a, info in zip(self.actors, infos)]
        group = open_gloo_group(host, port, 0, world, self.timeout_s)  # waits for every worker to join
        self._rpc(joined, "join the transfer group")
        info = update_info(state)
        self._rpc(self._call("start"), "start")
        received = self._call("receive", info)  # workers block in the broadcasts below
        failure: list[BaseException] = []

        def send():  # in a thread, so that an engine's error is seen while the broadcast still waits for it
            try:
                send_buckets(group, state, info, self.bucket_bytes)
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                failure.append(exc)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        sender.join(self.timeout_s + 5)
        self._rpc(received, "receive")  # an engine's error first: it says more than the sender's timeout
        if sender.is_alive() or failure:
            raise RolloutError(f"weight sync: the broadcast did not complete ({failure[0] if failure else 'hung'})")

    @staticmethod
    def _cuda_device() -> torch.device:
        return torch.device("cuda", torch.cuda.current_device())

    def _send_nccl(self, state: dict, host: str, port: int, world: int) -> None:
        """vLLM's trainer-side NCCL engine: packed buckets broadcast from this process's current CUDA device."""
        from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

        device = self._cuda_device()

        class StateSource(WeightSource):  # CPU copies (ZeRO-3 gathers land on CPU) moved to the GPU one at a time
            def metadata(self):
                return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in state.items()]

            def __iter__(self):
                for n, t in state.items():
                    yield n, t.to(device, non_blocking=True)

        sync = self

        class Client:  # vLLM's VLLMWeightSyncClient protocol over the engine actors
            def init_weight_transfer_engine(self, init_info: dict) -> None:
                infos = sync._init_infos(host, port, world, {k: v for k, v in init_info.items()
                                                              if k not in ("master_address", "master_port",
                                                                           "rank_offset", "world_size")})
                sync._rpc([a.transfer.remote("init", i) for a, i in zip(sync.actors, infos)], "init")

            def start_weight_update(self) -> None:
                sync._rpc(sync._call("start"), "start")

            def update_weights(self, update_info) -> None:
                sync._rpc(sync._call("receive", update_info), "receive")

            def finish_weight_update(self, weight_version=None) -> None:
                pass  # CollectiveSync.send finishes (and versions) every engine itself

        engine = NCCLTrainerWeightTransferEngine.trainer_init(
            NCCLTrainerInitInfo(master_address=host, master_port=port, world_size=world, rank=0,
                                packed_buffer_size_bytes=self.bucket_bytes),
            client=Client(), source=StateSource())
        try:
            engine.send_weights()
        finally:
            if engine.model_update_group is not None:
                engine.model_update_group.destroy()
