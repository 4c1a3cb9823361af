#!/bin/sh
# Drift figures on EmoDB: a logistic regression on whisper-base features trained on speakers
# 03-14 scores three nights into one folder:
#   in-domain   8 "calls" of speakers 15 and 16 (each speaker's utterances of one emotion joined
#               with 0.5 s pauses), 16 kHz PCM as recorded;
#   telephone   the same calls through the telephone line (300-3400 Hz, G.711) stored as 8 kHz
#               mu-law WAV, as a contact centre stores them;
#   synthetic   8 calls of `ser-ray synth backlog` (synthetic voices, 8 kHz): another domain.
# Prints each night's drift figures (run record `drift`) and whether it alarmed.
#   sh docs/emodb-drift.sh [WORK_DIR]        (default /tmp/emodb-drift; ~8 min on 2 cores)
set -eu
D=${1:-/tmp/emodb-drift}
. docs/emodb-model.sh
$PY -c "
import glob, os, numpy as np, soundfile as sf, soxr
from ser_ray.channel import Line, telephone
for night in ('in-domain', 'telephone'):
    os.makedirs('$D/calls/' + night, exist_ok=True)
for spk in ('15', '16'):
    for code, emo in (('W', 'angry'), ('T', 'sad'), ('N', 'neutral'), ('L', 'boredom')):
        parts = []
        for f in sorted(glob.glob(f'$E/{spk}*{code}?.wav')):
            y, sr = sf.read(f, dtype='float32'); parts += [y, np.zeros(sr // 2, np.float32)]
        y = np.concatenate(parts)
        sf.write(f'$D/calls/in-domain/spk{spk}-{emo}.wav', y, sr, subtype='PCM_16')
        line = soxr.resample(telephone(y, sr, Line(codec='mulaw')), sr, 8000)
        sf.write(f'$D/calls/telephone/tel-spk{spk}-{emo}.wav', line, 8000, subtype='ULAW')"
[ -d "$D/calls/synthetic" ] || .venv/bin/ser-ray synth --layout backlog --calls 8 \
    --output "$D/calls/synthetic" >/dev/null
rm -rf "$D/out"
day=20
for night in in-domain telephone synthetic; do
    .venv/bin/ser-ray score --model "$D/model" --input "$D/calls/$night" --output "$D/out" \
        --run-date 2026-11-$day --no-progress --set report.clips=false >/dev/null
    day=$((day + 1))
done
$PY -c "
import glob, json
print('| night | calls | windows | out of distribution | median PSI (by chance) | label shift | alarm |')
print('|---|---|---|---|---|---|---|')
for night, f in zip(('in-domain', 'telephone', 'synthetic'), sorted(glob.glob('$D/out/runs/*.json'))):
    r = json.load(open(f)); d = r['drift']
    print(f\"| {night} | {r['calls']} | {d['windows']} | {d['ood_share']:.1%} | {d['psi']['median']:.2f} \"
          f\"({d['psi']['by_chance']:.2f}) | {d['labels']['total_variation']:.2f} | {'yes' if d['alarm'] else 'no'} |\")
print('threshold', d['reference']['threshold'], 'fitted on', d['reference']['n'], 'rows,',
      d['reference']['threshold_folds'], 'speaker folds')"
echo "index: $D/out/reports/index.html"
