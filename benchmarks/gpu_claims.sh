#!/usr/bin/env bash
# The heads claim (OCR against FCN, PSP, ASPP, DANet and self-attention) at FULL CamVid resolution on one CUDA GPU,
# two seeds per head, every run of one seed side by side on the GPU: about ten minutes on one H200 with 16 CPU
# cores at the default 2000 iterations (the data loaders, not the GPU, set the pace). Not run yet: no GPU has been
# lent to this project so far; the CPU figures (CamVid at half size) are in docs/results.md.
#
#   bash benchmarks/gpu_claims.sh                         # ITERS=2000 SEEDS="0 1" HEADS="fcn ocr psp aspp danet nonlocal"
#   ITERS=4000 HEADS="fcn ocr" bash benchmarks/gpu_claims.sh
#
# Runs go to runs/claims_gpu (resumable: run it again after a kill), the table, curves and verdicts to
# benchmarks/results/camvid_gpu/compare_heads.{md,json,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ITERS=${ITERS:-2000}
SEEDS=${SEEDS:-"0 1"}
HEADS=${HEADS:-"fcn ocr psp aspp danet nonlocal"}
WORKERS=${WORKERS:-2}  # data loader processes per run
common=(--base configs/camvid/ocr_hrnetv2_w18s_v2.yaml --runs-root runs/claims_gpu
        --results-dir benchmarks/results/camvid_gpu --no-progress device=cuda "train.iters=$ITERS"
        train.eval_interval=250 "data.num_workers=$WORKERS")
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: this script is for a GPU machine')"
mkdir -p runs/claims_gpu/logs
for seed in $SEEDS; do
  for head in $HEADS; do  # every (head, seed) its own process: small models leave the GPU mostly idle otherwise
    "$PY" benchmarks/compare.py heads --only "$head" --seeds "$seed" "${common[@]}" \
      > "runs/claims_gpu/logs/${head}_seed${seed}.log" 2>&1 &
  done
  wait  # one seed at a time: 6 runs share the GPU and the CPU cores
done
only=$(echo $HEADS | tr ' ' ',')
"$PY" benchmarks/compare.py heads --only "$only" --seeds $SEEDS "${common[@]}"  # every run is done: the table
