"""Pretrained speech encoders through transformers: one loader and one forward for every use.

Families:

* **Whisper** (``model_type`` whisper): its encoder only, fed log-mel frames from its own feature
  extractor. ``whisper_input="unpadded"`` feeds the clip's own frames with the position table cut
  to them (and masks the padding of shorter clips in a batch); ``"padded"`` pads every chunk to
  the 30 s the encoder was trained on. Either way pooling covers the clip's frames only.
* **Waveform encoders** (HuBERT, wav2vec 2.0, WavLM, data2vec-audio): raw 16 kHz input,
  normalised by their feature extractor, with attention masks when the model was trained with
  them (``feat_extract_norm == "layer"``); batches are grouped by length, so padding is small.

:class:`SpeechEncoder` is used by the frozen extractor (``features.encoder``), the fine-tuned
model (``models.encoder``) and, through both, by scoring: one implementation of the forward pass
and of the pooling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

SAMPLE_RATE = 16000
WHISPER = "whisper"
WAVEFORM_TYPES = ("hubert", "wav2vec2", "wavlm", "data2vec-audio")
WHISPER_INPUTS = ("unpadded", "padded")
DTYPES = ("auto", "fp32", "fp16", "bf16")
PRECISIONS = ("fp32", "int8", "auto")  # the encoder's arithmetic: float weights, or int8 on CPU
MIN_SAMPLES = 400  # 25 ms: the receptive field of the waveform encoders' first conv
BUCKET_RATIO = 1.25  # a batch's longest clip at most this times its shortest (padding <= 20 %)
MAX_GPU_BATCH = 256  # clips per batch on a GPU, whatever its free memory


def quiet_transformers() -> None:
    """transformers' load reports and progress bars would flood every worker's log (torchao's
    are quietened when ser_ray is imported: ``compat.quiet_optional_kernels``)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when a GPU is visible, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no GPU is visible; use device=auto or cpu")
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto`` -> fp16 on GPU, fp32 on CPU; half precision on a CPU is refused."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {list(DTYPES)}")
    if dtype == "auto":
        dtype = "fp16" if device.startswith("cuda") else "fp32"
    if dtype != "fp32" and not device.startswith("cuda"):
        raise ValueError(f"dtype={dtype} needs a GPU (device is {device}); use fp32 on CPU")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def int8_available() -> bool:
    """Whether torchao's int8 kernels import here (the CPU int8 path of :func:`quantize_int8`)."""
    try:
        _torchao_quant()
    except ImportError:
        return False
    return True


def _torchao_quant():
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    return quantize_, Int8DynamicActivationInt8WeightConfig


def resolve_precision(precision: str, dtype: str, device: str) -> str:
    """``precision`` (fp32 | int8 | auto) on ``device`` -> what the encoder computes in: ``int8``,
    or the float type ``dtype`` resolves to (fp32 on CPU; ``auto`` fp16 on GPU).

    ``auto``: int8 on a CPU where torchao's kernels import, the float path on a GPU. ``int8`` is
    a CPU path (dynamic int8 activations and weights in every Linear layer); on a GPU it is
    refused, as half precision on a CPU is."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
    cpu = not device.startswith("cuda")
    if precision == "auto":
        precision = "int8" if cpu and int8_available() else "fp32"
    if precision == "int8":
        if not cpu:
            raise ValueError(f"precision=int8 is the CPU path (device is {device}); use "
                             "precision=fp32 or auto (fp16/bf16 from dtype) on a GPU")
        if not int8_available():
            raise ValueError("precision=int8 needs torchao (pip install torchao); or use fp32")
        return "int8"
    import torch

    return {torch.float32: "fp32", torch.float16: "fp16",
            torch.bfloat16: "bf16"}[resolve_dtype(dtype, device)]


def precision_family(precision: str) -> str:
    """``int8`` or ``float``: features of one family match within the stated tolerance; a model
    trained on one family and scored on the other is refused unless mixing is allowed."""
    return "int8" if precision == "int8" else "float"


def quantize_int8(module) -> None:
    """Every ``Linear`` of ``module`` (in place) -> int8 weights with int8 activations quantised
    per token at run time (torchao's ``Int8DynamicActivationInt8WeightConfig``). Convolutions,
    embeddings and layer norms stay fp32. whisper-base on EmoDB: pooled states of the middle
    layer within cosine 0.9997 of fp32; the deeper layers' std halves down to 0.93 on a few
    clips (``benchmarks/encoder_precision.py``)."""
    quantize_, config = _torchao_quant()
    quantize_(module, config())


def _is_local(model: str) -> bool:
    return os.path.isdir(os.path.expanduser(model))


def pretrained_config(model: str, what: str = "encoder") -> tuple[str, bool, Any]:
    """``model`` (a local folder, or a hub id) -> (path to pass to ``from_pretrained``, whether
    it is local, its ``AutoConfig``). A folder is read with ``local_files_only``; a missing folder
    is a ``FileNotFoundError``; a hub id that cannot be fetched (no network, unknown name) is an
    error that says how to pass a local folder instead. ``what`` names the user in messages."""
    from transformers import AutoConfig

    quiet_transformers()
    if not model:
        raise ValueError(f"{what}: no model given; set model=/path/to/hf-folder (e.g. "
                         "../shared/models/whisper-base) or a hub id")
    local = _is_local(model)
    if not local and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise FileNotFoundError(f"{what} model folder {model!r} does not exist")
    path = os.path.expanduser(model) if local else model
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{what} model {model!r}: cannot load it from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Without network access, "
            f"download the model on a machine that has it (`hf download {model} --local-dir "
            f"DIR`), copy DIR here and pass model=DIR") from None
    return path, local, config


def load_pretrained(model: str, dtype=None) -> tuple[Any, Any, Any]:
    """``model`` (a local folder, or a hub id) -> (config, backbone module, feature extractor).

    A folder is read with ``local_files_only``; a hub id that cannot be fetched (no network,
    unknown name) is an error that says how to pass a local folder instead.
    """
    import torch
    from transformers import (AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor,
                              WhisperFeatureExtractor, WhisperModel)
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    path, local, config = pretrained_config(model)
    dtype = dtype or torch.float32
    kw = {"local_files_only": local, "dtype": dtype}
    if config.model_type == WHISPER:
        if (config.architectures or [None])[0] == "WhisperEncoder":  # a fine-tuned ser-ray backbone
            backbone = WhisperEncoder.from_pretrained(path, **kw)
        else:  # a full Whisper checkpoint: its weights are named model.encoder.*
            backbone = WhisperModel.from_pretrained(path, **kw).get_encoder()
    elif config.model_type in WAVEFORM_TYPES:
        backbone = AutoModel.from_pretrained(path, **kw)
    else:
        raise ValueError(f"encoder model {model!r} is a {config.model_type!r} model; supported: "
                         f"{[WHISPER, *WAVEFORM_TYPES]}")
    try:
        fe = AutoFeatureExtractor.from_pretrained(path, local_files_only=local)
    except (OSError, ValueError):  # a checkpoint without preprocessor_config.json
        if config.model_type == WHISPER:
            fe = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        else:
            fe = Wav2Vec2FeatureExtractor(
                do_normalize=True,
                return_attention_mask=getattr(config, "feat_extract_norm", "") == "layer")
    return config, backbone, fe


@dataclass
class Work:
    """What an encoder's batches computed: output frames of the clips and frames computed in
    all (the rest is padding), batches, and batches that held one clip."""

    frames: int = 0
    computed: int = 0
    batches: int = 0
    single: int = 0
    clips: int = 0

    def add(self, keep) -> None:
        self.frames += int(keep.sum())
        self.computed += int(keep.numel())
        self.batches += 1
        self.clips += int(keep.shape[0])
        self.single += int(keep.shape[0] == 1)

    def summary(self) -> dict[str, float]:
        """padding_share: computed frames that were padding; single_share: clips encoded in a
        batch of one; clips_per_batch."""
        return {"padding_share": round(1 - self.frames / max(self.computed, 1), 4),
                "single_share": round(self.single / max(self.clips, 1), 4),
                "clips_per_batch": round(self.clips / max(self.batches, 1), 2)}


@dataclass
class Batch:
    """Model inputs of a batch of clips, and each clip's number of output frames."""

    inputs: dict[str, Any]
    frames: Any  # torch.LongTensor (B,)
    mel_frames: Any = None  # Whisper unpadded: log-mel frames of each clip (B,)


class SpeechEncoder:
    """A loaded encoder: ``states(batch)`` -> hidden states of every layer (with grads when
    training), ``pooled(waves)`` -> per clip ``(layers + 1, 2 x hidden)`` mean and std over time.

    ``depth``: run the bottom ``depth`` transformer layers only (None: all), so states
    ``0..depth`` are computed, each exactly as the whole encoder computes it, and the layers
    above are never run. Scoring sets it to the deepest state its head reads.
    """

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto",
                 whisper_input: str = "unpadded", chunk_s: float = 30.0, batch_size: int = 8,
                 precision: str = "fp32", depth: int | None = None):
        if whisper_input not in WHISPER_INPUTS:
            raise ValueError(f"whisper_input={whisper_input!r} is not one of {list(WHISPER_INPUTS)}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, dtype, self.device)
        self.dtype = resolve_dtype("fp32" if self.precision == "int8" else dtype, self.device)
        self.config, self.backbone, self.fe = load_pretrained(model, self.dtype)
        self.backbone.to(self.device).eval()
        self.whisper = self.config.model_type == WHISPER
        if self.whisper:
            self.n_layers, self.hidden = self.config.encoder_layers, self.config.d_model
        else:
            self.n_layers, self.hidden = self.config.num_hidden_layers, self.config.hidden_size
        self.depth = self._cut(depth)
        if self.precision == "int8":
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            quantize_int8(self.backbone)
        self.whisper_input = whisper_input
        self.batch_size = max(1, int(batch_size))
        window = self.window_s
        self.chunk_s = min(float(chunk_s), window) if window else float(chunk_s)
        self.work = Work()

    def _cut(self, depth: int | None) -> int | None:
        """Keep the bottom ``depth`` layers (None, or all of them: the whole encoder); the others
        are dropped before any quantisation. transformers records a waveform model's states as
        layer outputs (its last one before any final norm), so cutting its layer list keeps
        them; Whisper's own loop applies its final norm only when every layer runs."""
        if depth is None or int(depth) == self.n_layers:
            return None
        depth = int(depth)
        if not 0 <= depth < self.n_layers:
            raise ValueError(f"depth={depth}: this encoder has {self.n_layers} layers "
                             f"(hidden states 0..{self.n_layers})")
        import torch

        if self.whisper:  # its own layer loop (_whisper_states) applies no final norm then
            self.backbone.layers = torch.nn.ModuleList(list(self.backbone.layers)[:depth])
        else:  # transformers records a layer's input with its output: keep one layer for state 0
            enc = self.backbone.encoder
            enc.layers = torch.nn.ModuleList(list(enc.layers)[: max(depth, 1)])
        return depth

    @property
    def window_s(self) -> float | None:
        """The longest input the encoder takes at once (Whisper: 30 s), or None."""
        if not self.whisper:
            return None
        return self.config.max_source_positions * 2 * self.fe.hop_length / SAMPLE_RATE

    @property
    def n_states(self) -> int:
        """Hidden states per clip: the embeddings plus one per transformer layer run."""
        return (self.n_layers if self.depth is None else self.depth) + 1

    # -- inputs ---------------------------------------------------------------------------
    def batch(self, waves: Sequence[np.ndarray]) -> Batch:
        """Clips (16 kHz float32, each at most ``chunk_s``) -> model inputs on the device the
        backbone is on now (a training worker may have moved it), in its dtype."""
        import torch

        p = next(self.backbone.parameters())
        device, dtype = p.device, p.dtype

        lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
        waves = [np.asarray(w, dtype=np.float32) for w in waves]
        if self.whisper:
            padded = self.whisper_input == "padded"
            if padded:
                feats = self.fe(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                                padding="max_length", truncation=True)["input_features"]
            else:  # each clip's own log-mel frames (its last STFT frames see its own end, not
                # the batch's padding), then zeros past each clip, as the convs see alone
                mel = (lengths // self.fe.hop_length).clamp(min=1)
                own = [self.fe([w], sampling_rate=SAMPLE_RATE, return_tensors="np",
                               padding="longest")["input_features"][0] for w in waves]
                feats = torch.zeros(len(own), own[0].shape[0], int(mel.max()))
                for k, f in enumerate(own):
                    n = min(f.shape[-1], int(mel[k]))
                    feats[k, :, :n] = torch.from_numpy(f[:, :n])
            # frames after the stride-2 conv: one per 2 mel hops, at most the position table
            frames = torch.clamp((lengths + 2 * self.fe.hop_length - 1) // (2 * self.fe.hop_length),
                                 1, self.config.max_source_positions)
            return Batch({"input_features": feats.to(device, dtype)}, frames,
                         None if padded else mel)
        got = self.fe(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="longest",
                      return_attention_mask=True)
        inputs = {"input_values": got["input_values"].to(device, dtype)}
        if getattr(self.fe, "return_attention_mask", False):
            inputs["attention_mask"] = got["attention_mask"].to(device)
        frames = self.backbone._get_feat_extract_output_lengths(lengths).long()
        return Batch(inputs, frames)

    # -- forward --------------------------------------------------------------------------
    def states(self, batch: Batch) -> list:
        """Hidden states ``[(B, T, hidden)] * n_states``: the embeddings, then every layer's
        output (Whisper's last one after its final layer norm, as ``last_hidden_state``, when
        every layer runs); ``depth + 1`` of them for a cut encoder."""
        if not self.whisper:
            out = self.backbone(**batch.inputs, output_hidden_states=True)
            return list(out.hidden_states)[: self.n_states]
        return self._whisper_states(batch)

    def _whisper_states(self, batch: Batch) -> list:
        import torch
        from torch.nn import functional as F

        enc = self.backbone
        x = F.gelu(enc.conv1(batch.inputs["input_features"]))
        if batch.mel_frames is not None:  # conv2 must see zeros past each clip, not gelu(bias)
            past = torch.arange(x.shape[-1], device=x.device)[None, None, :] \
                >= batch.mel_frames.to(x.device)[:, None, None]
            x = x.masked_fill(past, 0.0)
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
        T = x.shape[1]
        x = x + enc.embed_positions.weight[:T].to(x.dtype)
        x = F.dropout(x, p=enc.dropout, training=enc.training)
        mask = None
        if self.whisper_input == "unpadded" and int(batch.frames.min()) < T:
            # padding of the shorter clips in a batch is masked out of attention, so a clip
            # gives the same states alone or in a batch (the padded mode attends, as trained)
            keep = frame_mask(T, batch.frames, x.device)
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(
                ~keep, torch.finfo(x.dtype).min)[:, None, None, :]
        states = [x]
        for layer in enc.layers:
            x = layer(x, mask)
            x = x[0] if isinstance(x, tuple) else x
            states.append(x)
        if self.depth is None:
            states[-1] = enc.layer_norm(x)
        return states

    @property
    def masks_padding(self) -> bool:
        """Whether a clip padded inside a batch gives the states it gives alone: Whisper (each
        clip's log-mel frames are its own, zeros past its end reach the convolutions as they do
        alone, and attention masks the padding; ``padded`` input pads every clip to 30 s anyway)
        and waveform models trained with attention masks. A group-norm model (wav2vec 2.0 base,
        HuBERT) normalises over the padding, so it batches clips of one length only."""
        if self.whisper:
            return True
        return bool(getattr(self.fe, "return_attention_mask", False))

    def exact_batches(self, lengths: Sequence[int], batch_size: int) -> list[list[int]]:
        """Indices of clips in batches of at most ``batch_size`` whose results do not depend on
        the batch (features never depend on how work was cut). Clips are sorted by length and
        bucketed: a model that masks padding takes clips up to ``BUCKET_RATIO`` times the
        batch's shortest (padding is compute spent on nothing), one that cannot mask it clips
        of one length only."""
        order = sorted(range(len(lengths)), key=lambda k: lengths[k])
        out: list[list[int]] = []
        for k in order:
            first, last = (lengths[out[-1][0]], lengths[out[-1][-1]]) if out else (0, 0)
            fits = (lengths[k] <= BUCKET_RATIO * max(first, 1) if self.masks_padding
                    else lengths[k] == last)
            if out and len(out[-1]) < batch_size and fits:
                out[-1].append(k)
            else:
                out.append([k])
        return out

    def clip_bytes(self, samples: int) -> int:
        """Device memory one clip of ``samples`` needs in a forward pass, roughly: every hidden
        state kept for pooling, one layer's feed-forward activations and attention scores."""
        import torch

        frames = max(1, samples // (2 * self.fe.hop_length) if self.whisper else samples // 320)
        heads = getattr(self.config, "encoder_attention_heads", None) or getattr(
            self.config, "num_attention_heads", 8)
        size = torch.finfo(self.dtype).bits // 8
        per_frame = self.n_states * self.hidden + 4 * self.hidden + heads * frames
        return int(2 * size * frames * per_frame)

    def batch_limit(self, samples: int) -> int:
        """Clips per batch for clips of up to ``samples``: ``batch_size`` on a CPU; on a GPU as
        many as half of its free memory holds (at least ``batch_size``, at most
        ``MAX_GPU_BATCH``), so a large GPU is not fed batches sized for a CPU."""
        if not self.device.startswith("cuda"):
            return self.batch_size
        fit = int(0.5 * free_memory(self.device) // max(self.clip_bytes(samples), 1))
        return max(self.batch_size, min(MAX_GPU_BATCH, fit))

    # -- pooled features -----------------------------------------------------------------
    def chunks(self, y: np.ndarray) -> list[np.ndarray]:
        """A clip split into equal pieces of at most ``chunk_s`` (a 70 s call -> 3 x 23.3 s)."""
        size = int(self.chunk_s * SAMPLE_RATE)
        n = max(1, -(-len(y) // size))
        return list(np.array_split(y, n)) if n > 1 else [y]

    def pooled(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Clips (16 kHz float32) -> ``(n_states, 2 x hidden)`` float32 each: per layer the mean
        and the standard deviation over the clip's frames (over all chunks of a long clip).

        Chunks are batched ``batch_size`` at a time (on a GPU: as many as its free memory holds,
        :meth:`batch_limit`), bucketed by length (:meth:`exact_batches`)."""
        import torch

        pieces = [(i, c) for i, y in enumerate(waves) for c in self.chunks(y)]
        limit = self.batch_limit(max((len(c) for _, c in pieces), default=1))
        sums = np.zeros((len(waves), self.n_states, self.hidden), np.float64)
        sqs = np.zeros_like(sums)
        counts = np.zeros(len(waves), np.float64)
        with torch.inference_mode():
            for idx in self.exact_batches([len(c) for _, c in pieces], limit):
                batch = self.batch([pieces[k][1] for k in idx])
                states = torch.stack(self.states(batch), dim=1).float()  # (B, S, T, H)
                keep = frame_mask(states.shape[2], batch.frames, states.device).float()  # (B, T)
                self.work.add(keep)
                s = torch.einsum("bsth,bt->bsh", states, keep).double().cpu().numpy()
                q = torch.einsum("bsth,bt->bsh", states * states, keep).double().cpu().numpy()
                for j, k in enumerate(idx):
                    clip = pieces[k][0]
                    sums[clip] += s[j]
                    sqs[clip] += q[j]
                    counts[clip] += float(keep[j].sum())
        mean = sums / counts[:, None, None]
        std = np.sqrt(np.maximum(sqs / counts[:, None, None] - mean ** 2, 0.0))
        return [np.concatenate([m, s], axis=1).astype(np.float32) for m, s in zip(mean, std)]


def free_memory(device: str) -> int:
    """Free bytes on a CUDA ``device`` now."""
    import torch

    return int(torch.cuda.mem_get_info(torch.device(device))[0])


def frame_mask(T: int, frames, device):
    """(B, T) bool on ``device``: which of ``T`` output frames belong to each clip, from each
    clip's frame count ``frames`` (B,)."""
    import torch

    return torch.arange(T, device=device)[None, :] < frames.to(device)[:, None]
