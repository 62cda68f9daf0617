#!/usr/bin/env bash
# A CamVid claim at FULL resolution on one CUDA GPU, two seeds per arm, every run of one seed side by side on the
# GPU. SUITE=heads (default): OCR against FCN, PSP, ASPP, DANet and self-attention, about ten minutes on one H200
# with 16 CPU cores at the default 2000 iterations (the data loaders, not the GPU, set the pace). SUITE=merges:
# average, max, Attention to Scale and hierarchical merges over the scales 0.5 and 1 (each with its reference's
# per-scale supervision; on the CPU a merge run cost 1.2 to 2.2 times a single-scale one, docs/results.md). Not run
# yet: no GPU has been lent to this project so far; the CPU figures (CamVid at half size) are in docs/results.md.
#
#   bash benchmarks/gpu_claims.sh          # ITERS=2000 SEEDS="0 1" ARMS="fcn ocr psp aspp danet nonlocal"
#   ITERS=4000 ARMS="fcn ocr" bash benchmarks/gpu_claims.sh
#   SUITE=merges bash benchmarks/gpu_claims.sh   # ARMS="avg max attention hierarchical", baseline avg
#
# Runs go to runs/claims_gpu (resumable: run it again after a kill), the table, curves and verdicts to
# benchmarks/results/camvid_gpu/compare_SUITE.{md,json,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SUITE=${SUITE:-heads}
ITERS=${ITERS:-2000}
SEEDS=${SEEDS:-"0 1"}
case $SUITE in
  heads) ARMS=${ARMS:-${HEADS:-"fcn ocr psp aspp danet nonlocal"}}; baseline=() ;;
  merges) ARMS=${ARMS:-"avg max attention hierarchical"}; baseline=(--baseline avg) ;;
  *) echo "SUITE must be heads or merges (the CamVid claims), got '$SUITE'" >&2; exit 2 ;;
esac
WORKERS=${WORKERS:-2}  # data loader processes per run
common=(--base configs/camvid/ocr_hrnetv2_w18s_v2.yaml --runs-root runs/claims_gpu
        --results-dir benchmarks/results/camvid_gpu --no-progress "${baseline[@]}" device=cuda "train.iters=$ITERS"
        train.eval_interval=250 "data.num_workers=$WORKERS")
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: this script is for a GPU machine')"
mkdir -p runs/claims_gpu/logs
for seed in $SEEDS; do
  for arm in $ARMS; do  # every (arm, seed) its own process: small models leave the GPU mostly idle otherwise
    "$PY" benchmarks/compare.py "$SUITE" --only "$arm" --seeds "$seed" "${common[@]}" \
      > "runs/claims_gpu/logs/${SUITE}_${arm}_seed${seed}.log" 2>&1 &
  done
  wait  # one seed at a time: the runs of one seed share the GPU and the CPU cores
done
only=$(echo $ARMS | tr ' ' ',')
"$PY" benchmarks/compare.py "$SUITE" --only "$only" --seeds $SEEDS "${common[@]}"  # every run is done: the table
