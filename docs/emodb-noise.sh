#!/bin/sh
# The noise protocol on EmoDB (README, "Image CNNs on spectrograms and the noise protocol"):
# 1 s log-mel blocks (64 mels, 10 ms hop: 64 x 101 images), a babble noise bank mixed down from
# EmoDB's own recordings (4 files of 10 s, 8 voices each), then imagenet_cnn under 2
# speaker-independent folds, trained on clean blocks only and on clean + noisy blocks, each
# tested clean and at 15 / 20 / 40 dB SNR. No ImageNet weights can be fetched here, so the CNN
# starts from random weights and trains all layers with Adam (the seed's SGD recipe is for
# pretrained weights; from scratch it stays at chance). With a weights file, pass
# OPTS="{arch: resnet18, weights: /path/resnet18-f37072fd.pth}" for the seed's recipe.
#   sh docs/emodb-noise.sh                 # EMODB=../shared/data/emodb RUNS=runs; ~25 min
set -e
EMODB=${EMODB:-../shared/data/emodb}
RUNS=${RUNS:-runs}
PY=${PY:-.venv/bin/python}
OPTS=${OPTS:-"{arch: resnet18, optimizer: adam, lr: 0.001, epochs: 10, batch_size: 64}"}
PROTOCOL=${PROTOCOL:-"--protocol speaker-kfold --folds 2"}
$PY -m ser_ray.cli prepare --input "$EMODB" --corpus emodb --features logmel \
    --set feature_options.logmel.n_mels=64 --set audio.block_s=1.0 --set audio.trim=true \
    --output "$RUNS/emodb-logmel-blocks" --no-progress
$PY -c "from ser_ray.learn.augment import babble; babble(['$EMODB/wav'], '$RUNS/emodb-babble')"
for variant in none merged; do
  # shellcheck disable=SC2086
  $PY -m ser_ray.cli cv --config configs/noise_protocol.yaml $PROTOCOL \
      --features "$RUNS/emodb-logmel-blocks" --set noise_dir="$RUNS/emodb-babble" \
      --set augment.variant=$variant --set "model_options=$OPTS" --set cpus_per_worker=2 \
      --output "$RUNS/emodb-noise-$variant"
done
