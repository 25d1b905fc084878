#!/usr/bin/env bash
# Index a folder of your own camera crops with a trained run, then search it by description.
#   RUN      a trained run folder
#   IMAGES   a folder of person crops (searched recursively: jpg, jpeg, png, webp, bmp)
#   INDEX    where the index goes (default $RUN/index-$(basename IMAGES))
#   QUERY    the description to search for
set -euo pipefail
: "${RUN:?set RUN to a trained run folder}"
: "${IMAGES:?set IMAGES to a folder of person crops}"
QUERY=${QUERY:-"a woman in a red coat carrying a black bag"}
INDEX=${INDEX:-$RUN/index-$(basename "$IMAGES")}
if [ -f "$INDEX/header.json" ]; then
  personsearch export "$RUN" --images "$IMAGES" --out "$INDEX" --append   # only new or changed files
else
  personsearch export "$RUN" --images "$IMAGES" --out "$INDEX"
fi
personsearch query "$QUERY" --index "$INDEX" -k 20 --sheet "$INDEX/last-query.png"
