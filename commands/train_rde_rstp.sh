#!/usr/bin/env bash
# Train RDE (TAL + token-selection embeddings + clean-pair division) on RSTPReid (configs/rde_rstp.yaml), then evaluate the best checkpoint.
# Needs scikit-learn for the clean-pair division: pip install 'personsearch[rde]'.
#   DATA_ROOT  the RSTPReid folder (the one holding its annotation JSON and imgs/)
#   CLIP       CLIP ViT-B/16 weights: ViT-B/16 (= ~/.cache/clip/ViT-B-16.pt or $PERSONSEARCH_CLIP_DIR),
#              an OpenAI .pt, a .safetensors file or a Hugging Face CLIP folder
#   GPUS       processes for data-parallel training (1 = single GPU/CPU; N > 1 runs torchrun)
#   PREPARED   where the prepared dataset goes (default data/rstp)
#   NAME       run name (default agm_rstp)
set -euo pipefail
: "${DATA_ROOT:?set DATA_ROOT to the RSTPReid folder}"
CLIP=${CLIP:-ViT-B/16}
GPUS=${GPUS:-1}
PREPARED=${PREPARED:-data/rstp}
NAME=${NAME:-rde_rstp}
[ -f "$PREPARED/manifest.json" ] || personsearch prepare RSTPReid --root "$DATA_ROOT" --out "$PREPARED"
if [ "$GPUS" -gt 1 ]; then
  # IRRA's batch 64 is the global batch: each of the GPUS processes takes 64 / GPUS.
  torchrun --standalone --nproc_per_node "$GPUS" -m personsearch train \
    --config configs/rde_rstp.yaml --data "$PREPARED" --pretrained "$CLIP" --name "$NAME"
else
  personsearch train --config configs/rde_rstp.yaml --data "$PREPARED" --pretrained "$CLIP" --name "$NAME"
fi
personsearch eval "runs/$NAME" --sheet "runs/$NAME/eval.png"
