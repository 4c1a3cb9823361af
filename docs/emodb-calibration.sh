#!/bin/sh
# Calibrated probabilities on EmoDB (README, "Figures"): leave-one-speaker-out, each fold's model
# calibrated by temperature scaling on out-of-fold predictions of its own training speakers (3
# inner speaker folds); ECE, Brier and NLL of the test predictions before and after, and
# reliability.png. Then across corpora: the contact-centre recipe under leave-one-corpus-out on
# the synthetic corpora of docs/synthetic-loco.sh (run that first).
#   sh docs/emodb-calibration.sh     # EMODB=../shared/data/emodb WHISPER=../shared/models/whisper-base
set -e
EMODB=${EMODB:-../shared/data/emodb}
WHISPER=${WHISPER:-../shared/models/whisper-base}
RUNS=${RUNS:-runs}
PY=${PY:-.venv/bin/python}
[ -d "$RUNS/emodb-whisper-trim" ] || $PY -m ser_ray.cli prepare \
    --config configs/contact_centre/prepare.yaml --input "$EMODB" --corpus emodb \
    --set feature_options.encoder.model="$WHISPER" --output "$RUNS/emodb-whisper-trim" --no-progress
[ -d "$RUNS/emodb-egemaps-hc173" ] || $PY -m ser_ray.cli prepare --input "$EMODB" --corpus emodb \
    --features egemaps,handcrafted173 --set audio.trim=true --output "$RUNS/emodb-egemaps-hc173" \
    --no-progress
$PY -m ser_ray.cli cv --features "$RUNS/emodb-whisper-trim" --model logreg --protocol loso \
    --output "$RUNS/emodb-calibration-whisper"
$PY -m ser_ray.cli cv --features "$RUNS/emodb-egemaps-hc173" --feature-set egemaps,handcrafted173 \
    --model svm --protocol loso --output "$RUNS/emodb-calibration-svm"
if [ -d "$RUNS/syn-emodb-whisper" ]; then
  $PY -m ser_ray.cli cv --config configs/contact_centre/learn.yaml \
      --features "$RUNS/syn-ravdess-whisper" "$RUNS/syn-cremad-whisper" "$RUNS/syn-emodb-whisper" \
      --protocol leave-one-corpus-out --set "channel_protocol.codecs=[]" \
      --output "$RUNS/syn-loco-calibration"
fi
