"""The encoder's int8 path and length bucketing against fp32, on EmoDB with whisper-base, printed
side by side from ONE run (one process, one thread: the per-core figure).

    .venv/bin/python benchmarks/encoder_precision.py                 # ~6 min on 2 cores
    .venv/bin/python benchmarks/encoder_precision.py --files 120 --json /tmp/precision.json
    .venv/bin/python benchmarks/encoder_precision.py --candidates    # + torch.ao and ONNX Runtime

Every recording of ``../shared/data/emodb`` (or ``--input``; ``--files`` the first N in name
order) is decoded and conditioned as ``prepare`` does (trim on), then:

  (1) **prepare-like clips** (one clip per recording, 0.9-9 s): ``SpeechEncoder.pooled`` with
      batches of 8, (a) fp32 batching clips of one length only (the rule before length
      bucketing), (b) fp32 bucketed by length, (c) int8 bucketed. Printed: audio seconds per
      second, the share of computed frames that were padding, the share of clips encoded in a
      batch of one.
  (2) **scoring windows**: each recording cut or looped to the model's 2.6 s analysis window
      (``docs/emodb-night.sh``'s model), fp32 against int8, batches of 8; and each of them with
      the encoder cut at the middle state (``depth``, what scoring runs for a head that reads
      it), with the largest difference of the states it computes from the whole encoder's.
  (3) **tolerance**: per hidden state, the cosine similarity of each clip's int8 and fp32 pooled
      vectors (mean half and std half), min and mean; target >= 0.99 on the state the head
      reads (whisper-base: 3, the middle one) and reported for all.
  (4) **accuracy**: leave-one-speaker-out over the 10 EmoDB speakers, ser-ray's ``logreg`` head
      (``models.build_model``: scaler + logistic regression) on the middle state's mean+std.
      UA of a head trained on fp32 features and scoring fp32, the same head scoring int8
      features, and a head trained and scored on int8. Target: |UA(fp32 head on int8) -
      UA(fp32)| <= 0.5 points.

``--candidates`` also times PyTorch's eager dynamic quantisation (``torch.ao``, deprecated in
torch 2.13) and ONNX Runtime (the same forward exported, fp32 and ``quantize_dynamic`` int8) on
the scoring windows, when ``onnxruntime`` and ``onnx`` are installed (they are not ser-ray
dependencies). The exit status is 1 when a target is not met.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
WINDOW_S = 2.6
SR = 16000


def load_clips(src: Path, n: int) -> tuple[list[np.ndarray], list[str], list[str]]:
    """(clips, speakers, labels) of the first ``n`` EmoDB recordings, conditioned as prepare."""
    from ser_ray import audio
    from ser_ray.config import AudioConfig
    from ser_ray.corpora import get_corpus

    corpus = get_corpus("emodb")
    files = sorted(p for p in src.rglob("*.wav"))[:n]
    clips, speakers, labels = [], [], []
    cfg = AudioConfig(trim=True)
    for f in files:
        meta = corpus.parse(f.name)
        clips.append(audio.condition(audio.decode(f.read_bytes()), cfg))
        speakers.append(meta.speaker)
        labels.append(meta.label)
    return clips, speakers, labels


def timed(enc, clips, repeat: int = 1):
    """-> (audio seconds per second, pooled features, work summary) of ``enc.pooled``."""
    from ser_ray.encoders import Work

    enc.pooled(clips[:2])  # first-call costs out of the timing
    enc.work = Work()
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = enc.pooled(clips)
    secs = (time.perf_counter() - t0) / repeat
    return sum(len(c) for c in clips) / SR / secs, np.stack(out), enc.work.summary()


def windows_of(clips) -> list[np.ndarray]:
    n = int(WINDOW_S * SR)
    return [np.resize(c, n).astype(np.float32) for c in clips]


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, dict[str, float]]:
    """Per hidden state: min and mean cosine of the mean halves and of the std halves."""
    h = a.shape[2] // 2
    out = {}
    for s in range(a.shape[1]):
        row = {}
        for part, sl in (("mean", slice(0, h)), ("std", slice(h, None))):
            x, y = a[:, s, sl], b[:, s, sl]
            c = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
            row[part] = {"min": round(float(c.min()), 5), "mean": round(float(c.mean()), 5)}
        out[str(s)] = row
    return out


def loso(train_X, test_Xs, speakers, labels) -> tuple[list[float], list[np.ndarray], float]:
    """ser-ray's logreg head under leave-one-speaker-out, trained on ``train_X`` and scored on
    each of ``test_Xs`` (the same rows through another encoder precision or batching) -> (UA %
    of each, the mean over folds as ``cv`` reports it; the predictions of each; the least UA
    change one utterance's prediction can make: 100 / (folds x classes x the largest class of a
    fold's test speaker))."""
    from ser_ray.learn.metrics import compute_metrics
    from ser_ray.models.base import build_model

    names = sorted(set(labels))
    y = np.array([names.index(lab) for lab in labels])
    spk = np.array(speakers)
    uas = [[] for _ in test_Xs]
    preds = [np.zeros(len(y), int) for _ in test_Xs]
    folds = sorted(set(speakers))
    step = min(100 / (len(folds) * len(names) * np.bincount(y[spk == s]).max()) for s in folds)
    for s in folds:
        test = spk == s
        model = build_model("logreg", (train_X.shape[1],), len(names))
        model.fit(train_X[~test], y[~test])
        for ua, pred, X in zip(uas, preds, test_Xs):
            pred[test] = model.predict(X[test])
            ua.append(compute_metrics(y[test], pred[test], names)["ua"])
    return [round(100 * float(np.mean(u)), 2) for u in uas], preds, round(float(step), 3)


def candidates(model: str, wins: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """The other int8 runtimes on the scoring windows (one thread), against ser-ray's fp32."""
    import tempfile

    import torch

    from ser_ray.encoders import Batch, SpeechEncoder

    enc = SpeechEncoder(model, device="cpu", precision="fp32", batch_size=8)

    class Forward(torch.nn.Module):  # the forward ser-ray runs, as one module for export
        def __init__(self, e):
            super().__init__()
            self.e, self.backbone = e, e.backbone

        def forward(self, feats):
            frames = torch.full((feats.shape[0],), feats.shape[-1] // 2)
            return torch.stack(self.e._whisper_states(Batch({"input_features": feats}, frames)), 1)

    fwd = Forward(enc).eval()
    batches = [enc.batch(wins[i:i + 8]).inputs["input_features"] for i in range(0, len(wins), 8)]
    audio_s = len(wins) * WINDOW_S

    def speed(run):
        run()
        t0 = time.perf_counter()
        out = run()
        return audio_s / (time.perf_counter() - t0), out

    with torch.inference_mode():
        base, ref = speed(lambda: [fwd(b).numpy() for b in batches])
    results = {"torch fp32": {"x_real_time": round(base, 1)}}

    def add(name, run):
        rate, out = speed(run)
        mid = [(o[:, 3].mean(1), r[:, 3].mean(1)) for o, r in zip(out, ref)]
        cos = min(float(((a * b).sum(1) / np.linalg.norm(a, axis=1)
                         / np.linalg.norm(b, axis=1)).min()) for a, b in mid)
        results[name] = {"x_real_time": round(rate, 1), "vs_fp32": round(rate / base, 2),
                         "min_cosine_state3_mean": round(cos, 5)}

    q = copy.deepcopy(fwd)
    q.backbone = torch.ao.quantization.quantize_dynamic(q.e.backbone, {torch.nn.Linear},
                                                        dtype=torch.qint8)
    q.e = copy.copy(q.e)
    q.e.backbone = q.backbone
    with torch.inference_mode():
        add("torch.ao dynamic int8", lambda: [q(b).numpy() for b in batches])
    int8 = SpeechEncoder(model, device="cpu", precision="int8", batch_size=8)
    fwd8 = Forward(int8).eval()
    with torch.inference_mode():
        add("torchao int8 (ser-ray)", lambda: [fwd8(b).numpy() for b in batches])
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        results["onnxruntime"] = {"skipped": "onnxruntime/onnx not installed"}
        return results
    with tempfile.TemporaryDirectory() as tmp:
        for p in fwd.parameters():
            p.requires_grad_(False)
        path = Path(tmp) / "enc.onnx"
        torch.onnx.export(fwd, (batches[0],), str(path), input_names=["feats"],
                          output_names=["states"], dynamo=False, opset_version=17,
                          dynamic_axes={"feats": {0: "b", 2: "t"}, "states": {0: "b", 2: "f"}})
        quantize_dynamic(str(path), str(path.with_suffix(".int8.onnx")),
                         weight_type=QuantType.QInt8, per_channel=True)
        for name, p in (("onnxruntime fp32", path), ("onnxruntime int8", path.with_suffix(".int8.onnx"))):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
            add(name, lambda s=sess: [s.run(None, {"feats": b.numpy()})[0] for b in batches])
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, default=SHARED / "data" / "emodb")
    ap.add_argument("--model", default=str(SHARED / "models" / "whisper-base"))
    ap.add_argument("--files", type=int, default=535)
    ap.add_argument("--candidates", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.input.is_dir() or not Path(args.model).is_dir():
        print(f"needs {args.input} and {args.model}", file=sys.stderr)
        return 2
    import ser_ray.compat  # noqa: F401  (before transformers: the torchvision hook)
    import torch

    from ser_ray.encoders import SpeechEncoder

    torch.set_num_threads(1)
    clips, speakers, labels = load_clips(args.input, args.files)
    res: dict = {"clips": len(clips), "audio_s": round(sum(map(len, clips)) / SR, 1),
                 "threads": 1}
    fp32 = SpeechEncoder(args.model, device="cpu", precision="fp32", batch_size=8)
    int8 = SpeechEncoder(args.model, device="cpu", precision="int8", batch_size=8)
    same_length = copy.copy(fp32)  # the rule before bucketing: clips of one length per batch
    same_length.exact_batches = lambda lengths, bs: [
        b for grp in _same_length(lengths) for b in (grp[i:i + bs] for i in range(0, len(grp), bs))]
    rows = {}
    for name, enc in (("fp32, one length per batch", same_length), ("fp32, bucketed", fp32),
                      ("int8, bucketed", int8)):
        rate, out, work = timed(enc, clips)
        rows[name] = {"x_real_time": round(rate, 1), **work}
        res.setdefault("_out", {})[name] = out
    res["clips_table"] = rows
    a, b = res["_out"]["fp32, bucketed"], res["_out"]["int8, bucketed"]
    res["bucketed_vs_one_length"] = round(rows["fp32, bucketed"]["x_real_time"]
                                          / rows["fp32, one length per batch"]["x_real_time"], 2)
    res["clips_int8_vs_fp32"] = round(rows["int8, bucketed"]["x_real_time"]
                                      / rows["fp32, bucketed"]["x_real_time"], 2)
    wins = windows_of(clips)
    r32, w32, _ = timed(fp32, wins)
    r8, w8, _ = timed(int8, wins)
    mid = a.shape[1] // 2
    # (2b) the encoder cut at the state the head reads (scoring's ``depth``): the same states
    cuts = {}
    for name, full in (("fp32", w32), ("int8", w8)):
        enc = SpeechEncoder(args.model, device="cpu", precision=name, batch_size=8, depth=mid)
        rate, out, _ = timed(enc, wins)
        cuts[name] = {"x_real_time": round(rate, 1),
                      "vs_every_layer": round(rate / (r32 if name == "fp32" else r8), 2),
                      "max_abs_diff_states_0_%d" % mid: float(np.abs(out - full[:, :mid + 1]).max())}
    res["windows"] = {"fp32_x_real_time": round(r32, 1), "int8_x_real_time": round(r8, 1),
                      "int8_vs_fp32": round(r8 / r32, 2), "cut_at_state_%d" % mid: cuts,
                      "int8_cut_vs_fp32_every_layer": round(cuts["int8"]["x_real_time"] / r32, 2)}
    res["cosine"] = cos = cosines(a, b)
    flat = {k: v[:, mid].reshape(len(v), -1) for k, v in res["_out"].items()}
    X32, X8 = flat["fp32, bucketed"], flat["int8, bucketed"]
    (ua32, ua_mixed, ua_batch), (p32, p8, pb), step = loso(
        X32, [X32, X8, flat["fp32, one length per batch"]], speakers, labels)
    (ua8,), _, _ = loso(X8, [X8], speakers, labels)
    res["ua"] = {"protocol": f"LOSO, {len(set(speakers))} speakers, {len(clips)} utterances",
                 "state": mid, "fp32_head_fp32": ua32, "fp32_head_int8": ua_mixed,
                 "int8_head_int8": ua8, "delta_mixed": round(ua_mixed - ua32, 2),
                 "predictions_changed_by_int8": int((p32 != p8).sum()),
                 # the same fp32 features batched the old way (float noise of ~1e-5 only)
                 "fp32_head_fp32_other_batching": ua_batch,
                 "predictions_changed_by_batching": int((p32 != pb).sum()),
                 "one_utterance_moves_ua_by_at_least": step}
    if args.candidates:
        res["candidates"] = candidates(args.model, wins[:48])
    res.pop("_out")
    ok_cos = min(cos[str(mid)][p]["min"] for p in ("mean", "std")) >= 0.99
    ok_ua = abs(res["ua"]["delta_mixed"]) <= 0.5
    res["targets"] = {"cosine_state_%d_min>=0.99" % mid: ok_cos, "ua_delta<=0.5": ok_ua}
    print(json.dumps(res, indent=2))
    for name, row in rows.items():
        print(f"{name:28s} {row['x_real_time']:6.1f}x real time  padding {row['padding_share']:.3f}"
              f"  batch of one {row['single_share']:.3f}  clips/batch {row['clips_per_batch']}")
    print(f"scoring windows: fp32 {r32:.1f}x, int8 {r8:.1f}x real time per core "
          f"(int8/fp32 {r8 / r32:.2f}); cut at state {mid}: fp32 {cuts['fp32']['x_real_time']}x "
          f"({cuts['fp32']['vs_every_layer']}x every layer), int8 {cuts['int8']['x_real_time']}x "
          f"({cuts['int8']['vs_every_layer']}x), int8 cut / fp32 every layer "
          f"{res['windows']['int8_cut_vs_fp32_every_layer']}")
    print(f"cosine int8 vs fp32, state {mid}: min mean {cos[str(mid)]['mean']['min']}, "
          f"min std {cos[str(mid)]['std']['min']}; UA fp32 {ua32}, fp32 head on int8 {ua_mixed} "
          f"({res['ua']['delta_mixed']:+.2f}), int8 head {ua8}; int8 changed "
          f"{res['ua']['predictions_changed_by_int8']} of {len(clips)} predictions, fp32 batched "
          f"the old way {res['ua']['predictions_changed_by_batching']}; one utterance moves UA by "
          f">= {step} points")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if ok_cos and ok_ua else 1


def _same_length(lengths) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for k, n in sorted(enumerate(lengths), key=lambda kv: kv[1]):
        groups.setdefault(n, []).append(k)
    return list(groups.values())


if __name__ == "__main__":
    sys.exit(main())
