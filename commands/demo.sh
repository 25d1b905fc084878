#!/usr/bin/env bash
# The whole flow on a synthetic dataset: draw, prepare, train from scratch, evaluate, export, query.
# No download, no pretrained weights; about 10 minutes on a 2-core CPU.
#   OUT      where everything goes (default runs/demo)
#   MINUTES  training budget in minutes (default 7)
set -euo pipefail
OUT=${OUT:-runs/demo}
MINUTES=${MINUTES:-7}
personsearch demo --out "$OUT" --minutes "$MINUTES"
personsearch query "a man in a blue jacket with a black backpack" --index "$OUT/run/index" --sheet "$OUT/query2.png"
personsearch eval "$OUT/run" --sheet "$OUT/eval.png"
