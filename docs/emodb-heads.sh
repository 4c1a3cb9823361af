#!/bin/sh
# Heads on whisper-base compared under leave-one-speaker-out on EmoDB (535 utterances, 10
# speakers), every choice made on the training speakers of each fold (select: inner speaker
# folds), never on its test speaker. Prints one line per head; reports in $D/<head>/summary.md.
#   sh docs/emodb-heads.sh [WORK_DIR]        (default /tmp/emodb-heads; ~40 min on 2 cores)
set -eu
D=${1:-/tmp/emodb-heads}
W=${W:-../shared/models/whisper-base}
E=${E:-../shared/data/emodb/wav}
S=.venv/bin/ser-ray
mkdir -p "$D"
[ -d "$D/prep" ] || $S prepare --input "$E" --corpus emodb --features encoder,egemaps \
    --set feature_options.encoder.model=$W --set audio.trim=true --output "$D/prep" --no-progress
C="model_options.C: [0.1, 1.0, 10.0, 100.0]"
cv() {  # name, then the cv arguments
    name=$1; shift
    [ -f "$D/$name/metrics.json" ] || $S cv --features "$D/prep" --protocol loso --no-progress \
        --output "$D/$name" "$@" > /dev/null
    .venv/bin/python -c "
import json; m = json.load(open('$D/$name/metrics.json'))
chosen = m.get('selection', {}).get('chosen', {})
print(f\"$name: UA {100 * m['ua_mean']:.1f} +- {100 * m['ua_std']:.1f}, WA {100 * m['wa_mean']:.1f}\"
      + (f'; chosen: {chosen}' if chosen else ''))"
}
cv middle --feature-set encoder --model logreg
cv middle-c --feature-set encoder --model logreg --set "select={$C}"
cv middle-mean-c --feature-set encoder --model logreg --set layers=3:mean --set "select={$C}"
cv layer-c --feature-set encoder --model logreg --set "select={layers: every, $C}"
cv layers-2-4-c --feature-set encoder --model logreg --set layers=2-4 --set "select={$C}"
cv layers-all-c --feature-set encoder --model logreg --set layers=all --set "select={$C}"
cv layer-weighted --feature-set encoder --model layer_weighted
cv layer-weighted-linear --feature-set encoder --model layer_weighted \
    --set "model_options={hidden: []}"
cv fused-egemaps-c --feature-set encoder,egemaps --model logreg --set "select={$C}"
