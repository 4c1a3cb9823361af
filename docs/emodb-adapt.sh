#!/bin/sh
# Your own calls on EmoDB: the telephone night of docs/emodb-drift.sh (8 "calls" of speakers 15
# and 16 as 8 kHz mu-law, scored by a logistic regression on whisper-base features trained on
# speakers 03-14, clean) is sampled, labelled from the corpus's own labels (each call is one
# emotion), evaluated and adapted.
#   sh docs/emodb-adapt.sh [WORK_DIR]   (the folder docs/emodb-drift.sh wrote; ~5 min on 2 cores)
set -eu
D=${1:-/tmp/emodb-drift}
[ -d "$D/out/runs" ] || sh docs/emodb-drift.sh "$D"
rm -rf "$D/label" "$D/eval" "$D/adapted" "$D/adapted.work"
.venv/bin/ser-ray sample --scored "$D/out" --run-date 2026-11-21 --n 80 --set per_call=12 \
    --output "$D/label" >/dev/null
.venv/bin/python -c "
import pandas as pd
sheet = pd.read_csv('$D/label/sheet.csv', keep_default_na=False)
sheet['label'] = sheet['call_id'].str.rsplit('-', n=1).str[1]  # tel-spk15-angry -> angry
sheet.to_csv('$D/label/sheet.csv', index=False)
print(len(sheet), 'segments labelled:', sheet['label'].value_counts().to_dict())"
.venv/bin/ser-ray evaluate --model "$D/model" --labels "$D/label/sheet.csv" --output "$D/eval" \
    | .venv/bin/python -c "import json, sys; m = json.load(sys.stdin); print('evaluate: UA', round(m['ua'], 3), 'interval', [round(v, 3) for v in m['intervals']['ua']])"
.venv/bin/ser-ray adapt --model "$D/model" --labels "$D/label/sheet.csv" --output "$D/adapted" \
    | .venv/bin/python -c "import json, sys; r = json.load(sys.stdin); print('adapt, held-out folds of calls:', r['pooled'])"
