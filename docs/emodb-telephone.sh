#!/bin/sh
# EmoDB through the telephone channel (README, "Figures" and "Telephone calls"): leave-one-speaker-
# out, each fold's test speakers scored as recorded and through a 300-3400 Hz, 8 kHz line per
# codec (G.711 mu-law, G.711 A-law, MP3 and Opus at 16 kbit/s), for a model trained clean and one
# trained with a telephone copy of every training recording (codec, bitrate, loss, clipping and
# level drawn per copy). One cv command per head runs both training modes (channel_protocol).
#   1. whisper-base frozen (middle layer) + logreg, 7 classes;
#   2. eGeMAPS + handcrafted173 + SVM, 7 classes;
#   3. the contact-centre recipe (configs/contact_centre/): whisper-base + logreg, 4 shared classes;
#   4-6. two copies per recording, the SVM with speaker normalisation, the SVM's floor.
#   sh docs/emodb-telephone.sh      # EMODB=../shared/data/emodb WHISPER=../shared/models/whisper-base
#                                   # RUNS=runs; ~45 min on 2 cores
set -e
EMODB=${EMODB:-../shared/data/emodb}
WHISPER=${WHISPER:-../shared/models/whisper-base}
RUNS=${RUNS:-runs}
PY=${PY:-.venv/bin/python}
CODECS="channel_protocol.codecs=[mulaw,alaw,mp3,opus]"
$PY -m ser_ray.cli prepare --config configs/contact_centre/prepare.yaml --input "$EMODB" \
    --corpus emodb --set feature_options.encoder.model="$WHISPER" \
    --output "$RUNS/emodb-whisper-trim" --no-progress
$PY -m ser_ray.cli prepare --input "$EMODB" --corpus emodb --features egemaps,handcrafted173 \
    --set audio.trim=true --output "$RUNS/emodb-egemaps-hc173" --no-progress
$PY -m ser_ray.cli cv --features "$RUNS/emodb-whisper-trim" --model logreg --protocol loso \
    --set "$CODECS" --output "$RUNS/emodb-telephone-whisper"
$PY -m ser_ray.cli cv --features "$RUNS/emodb-egemaps-hc173" --feature-set egemaps,handcrafted173 \
    --model svm --protocol loso --set "$CODECS" --output "$RUNS/emodb-telephone-svm"
$PY -m ser_ray.cli cv --config configs/contact_centre/learn.yaml \
    --features "$RUNS/emodb-whisper-trim" --output "$RUNS/emodb-telephone-recipe"
# 4. whisper-base + logreg with two telephone copies per training recording;
# 5. eGeMAPS + handcrafted173 + SVM with speaker normalisation (each speaker, and each line's
#    recordings of a speaker, standardised by their own statistics, as score does per population).
$PY -m ser_ray.cli cv --features "$RUNS/emodb-whisper-trim" --model logreg --protocol loso \
    --set "$CODECS" --set channel_protocol.copies=2 --output "$RUNS/emodb-telephone-whisper-2copies"
$PY -m ser_ray.cli cv --features "$RUNS/emodb-egemaps-hc173" --feature-set egemaps,handcrafted173 \
    --model svm --protocol loso --set normalise=speaker --set "$CODECS" \
    --output "$RUNS/emodb-telephone-svm-speaker"
# 6. the SVM's floor on the telephone: trained on telephone copies only.
$PY -m ser_ray.cli cv --features "$RUNS/emodb-egemaps-hc173" --feature-set egemaps,handcrafted173 \
    --model svm --protocol loso --set "$CODECS" --set channel_protocol.compare=false \
    --set augment.variant=augmented --set "augment.steps=[{name: telephone}]" \
    --output "$RUNS/emodb-telephone-svm-matched"
