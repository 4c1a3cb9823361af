#!/bin/sh
# A real night for the README's screenshot: a logistic regression on whisper-base features
# trained on EmoDB speakers 03-14, scoring 8 "calls" built from speakers 15 and 16 (each
# speaker's utterances of one emotion joined with 0.5 s pauses), with whisper-base transcripts
# of every call's worst moment, then the night's HTML page photographed by headless chromium.
#   sh docs/emodb-night.sh [WORK_DIR]        (default /tmp/emodb-night; ~6 min on 2 cores)
set -eu
D=${1:-/tmp/emodb-night}
. docs/emodb-model.sh
$PY -c "
import glob, os, numpy as np, soundfile as sf
os.makedirs('$D/calls', exist_ok=True)
for spk in ('15', '16'):
    for code, emo in (('W', 'angry'), ('T', 'sad'), ('N', 'neutral'), ('L', 'boredom')):
        parts = []
        for f in sorted(glob.glob(f'$E/{spk}*{code}?.wav')):
            y, sr = sf.read(f, dtype='float32'); parts += [y, np.zeros(sr // 2, np.float32)]
        sf.write(f'$D/calls/spk{spk}-{emo}.wav', np.concatenate(parts), sr, subtype='PCM_16')"
rm -rf "$D/out"
.venv/bin/ser-ray score --model "$D/model" --input "$D/calls" --output "$D/out" \
    --run-date 2026-11-22 --set transcribe.model=$W --set transcribe.top_calls=8 --no-progress
page=$(ls "$D"/out/reports/run_date=2026-11-22/*.html)
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,2400 \
    --screenshot="$D/night.png" "file://$page" 2>/dev/null
# the README's copy: the first 2000 px, 64 colours
$PY -c "
from PIL import Image
im = Image.open('$D/night.png').convert('RGB')
im.crop((0, 0, im.width, min(im.height, 2000))).quantize(colors=64).save('$D/night-readme.png', optimize=True)"
echo "page: $page"
echo "screenshot: $D/night.png (README copy: $D/night-readme.png -> docs/emodb-night.png)"
