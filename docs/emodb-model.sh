# Sourced by docs/emodb-night.sh and docs/emodb-drift.sh: whisper-base features of EmoDB
# speakers 03-14 in "$D/prep" and a logistic regression on them in "$D/model" (each made once).
W=${W:-../shared/models/whisper-base}
E=${E:-../shared/data/emodb/wav}
PY=.venv/bin/python
mkdir -p "$D"
[ -d "$D/prep" ] || .venv/bin/ser-ray prepare --input "$E/0*.wav" "$E/1[0-4]*.wav" --corpus emodb \
    --features encoder --set feature_options.encoder.model=$W --set audio.trim=true \
    --output "$D/prep" --no-progress
[ -d "$D/model" ] || .venv/bin/ser-ray train --features "$D/prep" --model logreg --output "$D/model"
