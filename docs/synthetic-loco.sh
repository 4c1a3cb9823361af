#!/bin/sh
# The contact-centre recipe across corpora (README, "Figures"): three synthetic corpora in three
# layouts (RAVDESS, CREMA-D, EmoDB; 6 speakers x 4 emotions x 3 takes, voices of their own),
# whisper-base features, then leave-one-corpus-out with configs/contact_centre/learn.yaml: each
# corpus tested on a model trained on the other two, and the cross-corpus matrix in summary.md.
# Synthetic voices say nothing about accuracy on real speech; the matrix shows what the protocol
# reports.
#   sh docs/synthetic-loco.sh        # WHISPER=../shared/models/whisper-base RUNS=runs; ~8 min
set -e
WHISPER=${WHISPER:-../shared/models/whisper-base}
RUNS=${RUNS:-runs}
PY=${PY:-.venv/bin/python}
seed=1
for c in ravdess cremad emodb; do
  $PY -m ser_ray.cli synth --layout $c --speakers 6 --per-emotion 3 \
      --emotions neutral,happy,sad,angry --seed $seed --output "$RUNS/syn-$c"
  $PY -m ser_ray.cli prepare --config configs/contact_centre/prepare.yaml --input "$RUNS/syn-$c" \
      --corpus $c --set feature_options.encoder.model="$WHISPER" \
      --output "$RUNS/syn-$c-whisper" --no-progress
  seed=$((seed + 1))
done
$PY -m ser_ray.cli cv --config configs/contact_centre/learn.yaml \
    --features "$RUNS/syn-ravdess-whisper" "$RUNS/syn-cremad-whisper" "$RUNS/syn-emodb-whisper" \
    --protocol leave-one-corpus-out --output "$RUNS/syn-loco"
