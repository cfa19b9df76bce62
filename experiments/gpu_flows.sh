#!/usr/bin/env bash
# Issue #25 on one GPU, in under ten minutes: the convolutional-level flow on phi^4 (m2 = -4, lam = 4.572)
# trained on L = 16, then L = 32 and L = 64 from it (a plain weight copy: the parameters do not depend on L),
# each evaluated on 16384 samples with the KL split by level. Writes experiments/results/flows_gpu.json and
# figures/benchmark_flows_gpu.png. Usage: bash experiments/gpu_flows.sh [device]   (default cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
device="${1:-cuda}"
python experiments/benchmark_flows.py --device "$device" --batch-size 1024 --minutes 1.5 \
    --cases conv-L16,conv-L32-from16,conv-L64-from32 --work /tmp/rgflow-flows-gpu \
    --out experiments/results/flows_gpu.json --figure figures/benchmark_flows_gpu.png
