#!/usr/bin/env bash
# The whole flow on a synthetic dataset: draw, prepare, train from scratch, evaluate, export, query.
# No download, no pretrained weights; under 10 minutes on a 2-core CPU.
#   OUT      where everything goes (default runs/demo)
#   MINUTES  training budget in minutes (default 8.5)
set -euo pipefail
OUT=${OUT:-runs/demo}
MINUTES=${MINUTES:-8.5}
personsearch demo --out "$OUT" --minutes "$MINUTES" --json > "$OUT.summary.json"
# A second query the test gallery can answer (the demo builds it from the gallery's attributes).
QUERY=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["suggestions"][0])' "$OUT.summary.json")
personsearch query "$QUERY" --index "$OUT/run/index" --sheet "$OUT/query2.png"
personsearch eval "$OUT/run" --sheet "$OUT/eval.png"
