"""The collective weight push's transport without vLLM (rollout/weight_sync.py): the bucket plan, a real gloo
broadcast of mixed-dtype weights in small buckets between two processes, and a peer that never joins -> an error
after the timeout, not a hang. The same push into vLLM engines is tested in test_vllm_engine.py (`make test-vllm`)."""
import multiprocessing
import time

import pytest
import torch

from alignkit.rollout.weight_sync import (
    _free_port,
    open_gloo_group,
    plan_buckets,
    receive_buckets,
    send_buckets,
    update_info,
)


def test_bucket_plan():
    # 4-byte floats: 10 + 10 elements fit 80 bytes; a dtype change starts a bucket; a too-big tensor is alone
    plan = plan_buckets(["float32", "float32", "float32", "bfloat16", "float32"], [[10], [10], [10], [4], [100]], 80)
    assert plan == [[0, 1], [2], [3], [4]]
    assert plan_buckets([], [], 80) == []
    assert plan_buckets(["float32"] * 3, [[2, 3], [], [1]], 1 << 20) == [[0, 1, 2]]  # a scalar has 1 element


def _weights() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 5, generator=g), "a.bias": torch.randn(5, generator=g),
            "b.weight": torch.randn(7, 2, generator=g).to(torch.bfloat16), "scale": torch.tensor(2.5),
            "c.weight": torch.randn(40, generator=g)}


def _receiver(port: int, info: dict, queue) -> None:
    group = open_gloo_group("127.0.0.1", port, 1, 2, timeout_s=30)
    got = {}
    for pairs in receive_buckets(group, info, bucket_bytes=64):
        got.update({n: t.clone() for n, t in pairs})
    queue.put({k: v.tolist() for k, v in got.items()})


def test_buckets_arrive_intact_over_gloo():
    weights = _weights()
    info = update_info(weights)
    assert len(plan_buckets(info["dtype_names"], info["shapes"], 64)) >= 4  # several buckets really are used
    ctx = multiprocessing.get_context("spawn")
    queue, port = ctx.Queue(), _free_port()
    peer = ctx.Process(target=_receiver, args=(port, info, queue))
    peer.start()
    group = open_gloo_group("127.0.0.1", port, 0, 2, timeout_s=30)
    sent = send_buckets(group, weights, info, bucket_bytes=64)
    got = queue.get(timeout=60)
    peer.join(30)
    assert sent == sum(t.numel() * t.element_size() for t in weights.values())
    assert list(got) == list(weights)
    for name, tensor in weights.items():
        assert torch.equal(torch.tensor(got[name], dtype=tensor.dtype), tensor), name


def test_a_peer_that_never_joins_is_an_error_not_a_hang():
    start = time.perf_counter()
    with pytest.raises(Exception, match="(?i)timed? ?out|timeout"):
        open_gloo_group("127.0.0.1", _free_port(), 0, 2, timeout_s=2)  # rank 1 never comes
    assert time.perf_counter() - start < 30
