#!/usr/bin/env bash
# One GPU, one script: LLaVA-1.5-7B-shaped stage-2 training throughput (tokens/s, MFU, peak memory)
# and constrained extraction throughput, with random weights built from configs (no download).
#
#   bash bench/gpu.sh                 # on the GPU machine, from the repository root; < 8 minutes
#   bash bench/gpu.sh --tiny          # the same Python on a CPU with tiny shapes (a few seconds)
#
# Writes bench/gpu-results.json (or $OUT/gpu-results.json when $OUT is set) and prints one summary line.
# Installs nothing that needs a network if torch and transformers are already present: the project
# itself is installed with --no-deps. Flash attention is used when the flash-attn package is
# importable, SDPA otherwise (vlx.device.attn_implementation).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-bench}/gpu-results.json
mkdir -p "$(dirname "$RESULTS")"
start=$(date +%s)

if ! "$PY" -c "import torch, transformers" 2>/dev/null; then
    echo "installing torch and the project's dependencies (needs a package index)" >&2
    "$PY" -m pip install -q -e . >&2
elif ! "$PY" -c "import vlx" 2>/dev/null; then
    # Dependencies present: install only the project, without touching the installed torch/CUDA stack.
    "$PY" -m pip install -q --no-deps -e . >&2 || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'EOF' >&2
import importlib.util, torch, transformers
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"flash-attn {'yes' if importlib.util.find_spec('flash_attn') else 'no'}, "
      f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
EOF

if [[ "${1:-}" == "--tiny" ]]; then
    VLX_PRECISION=fp32 "$PY" bench/gpu_stage2.py --tiny --steps 2 --warmup 1 --samples-per-step 4 \
        --extract-images 4 --extract-batch 2 --json "$RESULTS"
else
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "error: no CUDA device; run with --tiny to check the script on a CPU" >&2
        exit 2
    fi
    # 8 measured steps of 16 packed samples (~14k tokens each) after 2 warm-up steps; 32 extractions.
    timeout 420 "$PY" bench/gpu_stage2.py --steps 8 --warmup 2 --samples-per-step 16 \
        --extract-images 32 --extract-batch 16 --json "$RESULTS"
fi
echo "total $(( $(date +%s) - start )) s; results in $RESULTS" >&2
