"""The trainer side of the GPU weight push (CollectiveSync._send_nccl) run against the installed vLLM's own
NCCLTrainerWeightTransferEngine, with only its two CUDA pieces replaced (the NCCL endpoint and the packed broadcast)
and Ray actors standing in for the engines. What it catches without a GPU: a vLLM upgrade that renames an init-info
field, changes the trainer/client protocol, or rejects the dicts alignkit sends to the workers (they are parsed here
with vLLM's worker-side dataclasses, as its workers parse them)."""
import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

import ray  # noqa: E402

from alignkit.rollout.weight_sync import CollectiveSync  # noqa: E402


@ray.remote(num_cpus=0)
class FakeEngine:
    """Answers CollectiveSync's engine calls like rollout/vllm_engine.py's EngineActor.transfer, and records them."""

    def __init__(self, workers: int):
        self.workers, self.calls = workers, []

    def transfer(self, step: str, *args):
        self.calls.append((step, args))
        if step == "describe":
            return {"workers": self.workers, "tied_lm_head": True}
        return 1 if step == "finish" else None

    def recorded(self) -> list:
        return self.calls


def test_nccl_push_speaks_vllms_protocol(monkeypatch):
    from vllm.distributed.weight_transfer import nccl_engine
    from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo

    broadcast = []

    class Group:
        destroyed = False

        def destroy(self):
            Group.destroyed = True

    def producer(iterator, group, src, post_iter_func, buffer_size_bytes, num_buffers):
        assert src == 0 and buffer_size_bytes == 1 << 20
        broadcast.extend((name, post_iter_func((name, t)).clone()) for name, t in iterator)

    monkeypatch.setattr(nccl_engine, "open_trainer_endpoint", lambda info: Group())
    monkeypatch.setattr(nccl_engine, "packed_nccl_broadcast_producer", producer)
    monkeypatch.setattr(CollectiveSync, "_cuda_device", staticmethod(lambda: torch.device("cpu")))
    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        engines = [FakeEngine.remote(1), FakeEngine.remote(2)]  # e.g. a TP=1 and a TP=2 engine
        state = {"model.embed_tokens.weight": torch.randn(8, 4), "model.norm.weight": torch.ones(4).bfloat16()}
        result = CollectiveSync(engines, device="cuda", bucket_bytes=1 << 20, timeout_s=30).send(state)
        calls = ray.get([e.recorded.remote() for e in engines])
    finally:
        ray.shutdown()

    assert result["version"] == 1 and Group.destroyed
    # the tied head the engines asked for is pushed too, in the order vLLM's metadata declared
    assert [n for n, _ in broadcast] == ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    assert torch.equal(broadcast[2][1], state["model.embed_tokens.weight"])
    offsets = []
    for engine_calls in calls:
        steps = [s for s, _ in engine_calls]
        assert steps == ["describe", "init", "start", "receive", "finish"]
        init = NCCLWeightTransferInitInfo(**engine_calls[1][1][0])  # as vLLM's worker parses it
        assert init.world_size == 4 and init.packed and init.packed_buffer_size_bytes == 1 << 20
        offsets.append(init.rank_offset)
        update = nccl_engine.NCCLWeightTransferUpdateInfo(**engine_calls[3][1][0])
        assert update.names == [n for n, _ in broadcast]
        assert update.dtype_names == ["float32", "bfloat16", "float32"] and update.shapes[2] == [8, 4]
    assert offsets == [1, 2]  # trainer = rank 0, engine 0's worker = 1, engine 1's two workers = 2, 3
