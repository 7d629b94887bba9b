#!/usr/bin/env bash
# The training-side GPU check for a lent GPU machine (issue 19), in about 3 minutes on one H200:
#   1. the `gpu`-marked tests (every objective family trains on CUDA);
#   2. bench/gpu_check.py: placement + CPU-equal fp32 losses per objective family, one online round trip with the
#      engine's log-probs checked after the push, bf16 steps, DPO tokens/s and MFU on a 1.1 B Llama-shaped model.
#
#   bash bench/gpu_check.sh [OUT_DIR]        # default runs/gpu_check
#
# The lent machine has torch, transformers, peft and pytest but no Ray, DeepSpeed or vLLM, and no network: this
# script needs nothing of those. Bring along (ignored paths in the device tool's `carry`):
#   .gpu_carry/wheels   omegaconf + antlr4 (pip download -d .gpu_carry/wheels omegaconf==2.3.0 antlr4-python3-runtime==4.9.3)
#   .gpu_carry/cache    the alignkit cache with models/tiny-llama and models/smollm2-tokenizer (ALIGNKIT_CACHE)
set -u
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD
if [ -d .gpu_carry/wheels ]; then
  "$PYTHON" -m pip install --quiet --no-index --no-build-isolation --find-links .gpu_carry/wheels omegaconf 2>&1 | tail -2
fi
[ -d .gpu_carry/cache ] && export ALIGNKIT_CACHE=$PWD/.gpu_carry/cache
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null

status=0
echo "== pytest -m gpu"
"$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/engine/test_device_seam.py 2>&1 | tail -15 \
  | tee "$OUT/pytest_gpu.txt" || status=1
echo "== bench/gpu_check.py"
"$PYTHON" bench/gpu_check.py --out "$OUT" 2>&1 | grep -v "Loading weights\|Writing model shards" \
  | tee "$OUT/gpu_check.txt" || status=1
exit $status
