#!/usr/bin/env bash
# Evaluate a trained run (ours, or an IRRA run folder with configs.yaml + best.pth) on a prepared split.
#   RUN        the run folder
#   PREPARED   a prepared dataset (default: the one the run was trained on)
#   SPLIT      test or val (default test)
#   PRECISION  fp32, bf16 or fp16 on CUDA (default fp32)
set -euo pipefail
: "${RUN:?set RUN to a run folder}"
SPLIT=${SPLIT:-test}
PRECISION=${PRECISION:-fp32}
args=("$RUN" --split "$SPLIT" --precision "$PRECISION" --i2t --sheet "$RUN/eval-$SPLIT.png")
[ -n "${PREPARED:-}" ] && args+=(--data "$PREPARED")
personsearch eval "${args[@]}"
