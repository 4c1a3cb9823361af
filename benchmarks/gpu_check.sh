#!/bin/sh
# Every GPU check of the encoder work (#31) in one call, for a machine with a GPU and this
# repository's .venv (a CUDA torch) and ../shared (EmoDB, whisper-base). Not run yet: no GPU
# has been lent to this project's sessions.
#   sh benchmarks/gpu_check.sh [OUT_DIR]      (default $OUT or /tmp/gpu-check; ~10 min)
# Prints, and writes as JSON under OUT_DIR:
#   - the GPU and its memory;
#   - prepare with whisper-base on Ray Data, one actor with one GPU (precision auto: fp16),
#     audio seconds per second and GPU busy share (encoder_throughput.py --gpu);
#   - the nightly score of a 10x backlog on the staged engine, one model actor per GPU, batches
#     sized from free memory: audio hours per GPU hour and GPU busy share
#     (score_encoder_throughput.py --gpu; target busy >= 80 %).
set -eu
OUT_DIR=${1:-${OUT:-/tmp/gpu-check}}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee "$OUT_DIR/gpu.csv"
$PY -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print(torch.cuda.get_device_name())"
$PY benchmarks/encoder_throughput.py --gpu --files 535 --json "$OUT_DIR/encoder-gpu.json"
D=/tmp/emodb-night
export D
sh -c '. docs/emodb-model.sh'
$PY benchmarks/score_encoder_throughput.py --gpu --model "$D/model" --json "$OUT_DIR/score-gpu.json"
