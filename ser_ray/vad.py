"""Voice activity detection: mono float audio -> speech segments ``[(start_s, end_s), ...]``.

A detector is a frozen dataclass (its config) registered by name:

- ``energy``: frame RMS level in dB against the clip's loudest frames, with an absolute floor.
  Pure numpy, no model, thousands of times faster than real time; fooled by loud steady noise.
- ``silero``: the silero-vad network (``pip install silero-vad``; its model ships inside the
  wheel, so it runs offline). Robust to noise and music; needs 8 or 16 kHz input.

``detect(y, sr)`` with ``detector="auto"`` uses silero when it is installed, else energy; record
``detector_config(get_detector(...))`` with the run so the segments can be recomputed.
``detect_many(signals, sr)`` gives the same segments for many signals at once: silero runs them
through its network together, several times faster than one by one.
``windows(segments, ...)`` then cuts speech into fixed-length analysis windows that never cross
a segment boundary. Times are seconds from the start of ``y`` throughout.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import warnings
from dataclasses import dataclass
from typing import ClassVar, Sequence, TypeVar

import numpy as np
from scipy.ndimage import uniform_filter1d

from ser_ray.registry import registrar

Segment = tuple[float, float]

_REGISTRY: dict[str, type["Detector"]] = {}

D = TypeVar("D", bound=type["Detector"])


@dataclass(frozen=True)
class Detector:
    """Base config shared by every detector: how raw speech regions are tidied.

    Gaps shorter than ``min_silence_s`` are bridged (a pause between words is not the end of a
    turn), then segments shorter than ``min_speech_s`` are dropped (clicks, breaths).
    """

    name: ClassVar[str] = ""
    min_speech_s: float = 0.25
    min_silence_s: float = 0.3

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"vad {self.name!r}: {f.name}={value} must be finite")
        if self.min_speech_s < 0 or self.min_silence_s < 0:
            raise ValueError(f"vad {self.name!r}: min_speech_s and min_silence_s must be >= 0, "
                             f"got {self.min_speech_s} and {self.min_silence_s}")

    def regions(self, y: np.ndarray, sr: int) -> list[Segment]:  # pragma: no cover - abstract
        """Raw speech regions of validated, non-empty ``y``; :meth:`__call__` tidies them."""
        raise NotImplementedError

    def regions_many(self, ys: Sequence[np.ndarray], sr: int) -> list[list[Segment]]:
        """:meth:`regions` of each of ``ys``; detectors that gain from batching override this."""
        return [self.regions(y, sr) for y in ys]

    def __call__(self, y: np.ndarray, sr: int) -> list[Segment]:
        """Speech segments of mono float audio ``y`` (n,) at ``sr`` Hz, sorted, non-overlapping,
        each ``(start_s, end_s)`` with ``0 <= start_s < end_s <= n / sr``. Silence or empty -> []."""
        return self._segments([_validated(y, sr, self.name)], sr)[0]

    def many(self, ys: Sequence[np.ndarray], sr: int) -> list[list[Segment]]:
        """``[self(y, sr) for y in ys]``, equal to it exactly, but batched where the detector can;
        a bad signal raises ValueError naming its index before any work is done."""
        return self._segments([_validated(y, sr, self.name, f" signals[{i}]") for i, y in enumerate(ys)], sr)

    def _segments(self, ys: list[np.ndarray], sr: int) -> list[list[Segment]]:
        live = [i for i, y in enumerate(ys) if y.size]
        out: list[list[Segment]] = [[] for _ in ys]
        for i, found in zip(live, self.regions_many([ys[i] for i in live], sr) if live else []):
            out[i] = _tidy(found, self.min_speech_s, self.min_silence_s, ys[i].size / sr)
        return out


def _validated(y, sr: int, who: str, where: str = "") -> np.ndarray:
    if not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise ValueError(f"vad {who!r}: sample rate must be a positive integer, got {sr!r}")
    y = np.asarray(y)
    at = f"vad {who!r}{where}"
    if y.ndim != 1:
        raise ValueError(f"{at}: expected mono 1-D audio, got shape {y.shape}; downmix or pick a channel first")
    if not np.issubdtype(y.dtype, np.floating):
        raise ValueError(f"{at}: expected float audio in [-1, 1], got dtype {y.dtype}")
    if not np.all(np.isfinite(y)):
        bad = "NaN" if np.isnan(y).any() else "inf"
        raise ValueError(f"{at}: audio contains {bad} samples (first at sample "
                         f"{int(np.flatnonzero(~np.isfinite(y))[0])}); the decoder or a filter upstream is broken")
    return y


def _tidy(regions: Sequence[Segment], min_speech_s: float, min_silence_s: float, duration_s: float) -> list[Segment]:
    merged: list[list[float]] = []
    for start, end in sorted((max(0.0, float(s)), min(duration_s, float(e))) for s, e in regions):
        if end <= start:
            continue
        if merged and start - merged[-1][1] < min_silence_s:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged if e - s >= min_speech_s]


register = registrar(_REGISTRY, "vad")  # class decorator: register(name)


def available() -> list[str]:
    """Registered detector names (``silero`` is listed even when its package is missing)."""
    return sorted(_REGISTRY)


def resolve(name: str) -> str:
    """The registered name ``name`` stands for: ``auto`` -> ``silero`` if installed, else ``energy``."""
    if name == "auto":
        return "silero" if silero_installed() else "energy"
    if name not in _REGISTRY:
        raise ValueError(f"unknown vad {name!r}; choose one of auto, {', '.join(available())}")
    return name


def get_detector(name: str = "auto", **cfg) -> Detector:
    """The detector registered under ``name`` (after :func:`resolve`) configured with ``cfg``."""
    cls = _REGISTRY[resolve(name)]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ValueError(f"vad {cls.name!r} has no option {', '.join(unknown)}; "
                         f"its options are {', '.join(sorted(fields))}")
    return cls(**cfg)


def detector_config(detector: Detector) -> dict:
    """``{"name": ..., **fields}``: what a run records so its segments can be recomputed."""
    return {"name": detector.name, **dataclasses.asdict(detector)}


def detect(y: np.ndarray, sr: int, detector: str | Detector = "auto", **cfg) -> list[Segment]:
    """Speech segments ``[(start_s, end_s), ...]`` of mono float audio ``y`` (n,) at ``sr`` Hz.

    ``detector`` is a registered name (or ``auto``) configured by ``cfg``, or a :class:`Detector`.
    Empty or silent audio gives ``[]``; NaN or inf samples raise ValueError.
    """
    return _configured(detector, cfg)(y, sr)


def detect_many(signals: Sequence[np.ndarray], sr: int, detector: str | Detector = "auto",
                **cfg) -> list[list[Segment]]:
    """Speech segments of each of ``signals`` (mono float audio at ``sr`` Hz): element ``i`` equals
    ``detect(signals[i], sr, detector, **cfg)`` exactly. silero runs the pieces of all signals
    through its network together, which is where its speed comes from; a signal that is not
    valid audio raises ValueError naming its index.
    """
    return _configured(detector, cfg).many(signals, sr)


def _configured(detector: str | Detector, cfg: dict) -> Detector:
    if isinstance(detector, Detector):
        if cfg:
            raise ValueError("pass options either in the Detector or as keywords, not both")
        return detector
    return get_detector(detector, **cfg)


# --- energy ---------------------------------------------------------------------------------

@register("energy")
@dataclass(frozen=True)
class EnergyVAD(Detector):
    """Frames whose RMS level is within ``rel_db`` of the loudest frames and above ``floor_dbfs``.

    "Loudest" is the ``ref_percentile`` of frame levels, so one click does not set the reference.
    The relative threshold follows the recording's gain (a quiet line still has speech); the
    absolute floor keeps a clip of pure background noise from becoming all speech. A detected
    frame keeps the next ``hangover_s`` marked as speech so soft word endings are not clipped.
    """

    frame_s: float = 0.03   # analysis frame; rounded to a whole number of hops
    hop_s: float = 0.01
    rel_db: float = 40.0
    ref_percentile: float = 99.0
    floor_dbfs: float = -55.0
    hangover_s: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hop_s <= 0 or self.frame_s < self.hop_s:
            raise ValueError(f"vad 'energy': need 0 < hop_s <= frame_s, got hop_s={self.hop_s}, "
                             f"frame_s={self.frame_s}")
        if not 0 <= self.ref_percentile <= 100 or self.rel_db < 0 or self.hangover_s < 0:
            raise ValueError("vad 'energy': ref_percentile must be in [0, 100], rel_db and hangover_s >= 0")

    def regions(self, y: np.ndarray, sr: int) -> list[Segment]:
        hop = max(1, round(self.hop_s * sr))
        k = max(1, round(self.frame_s / self.hop_s))
        level_db = _frame_db(y, hop, k)
        threshold = max(float(np.percentile(level_db, self.ref_percentile)) - self.rel_db, self.floor_dbfs)
        speech = level_db >= threshold
        hang = round(self.hangover_s * sr / hop)
        if hang and speech.any():
            # Frame j stays speech if any of frames j-hang..j was: a causal dilation.
            speech = np.convolve(speech, np.ones(hang + 1), mode="full")[: speech.size] > 0
        edges = np.flatnonzero(np.diff(np.concatenate([[0], speech.astype(np.int8), [0]])))
        return [(a * hop / sr, min((b - 1) * hop + k * hop, y.size) / sr) for a, b in zip(edges[::2], edges[1::2])]


def _frame_db(y: np.ndarray, hop: int, k: int, chunk: int = 1 << 20) -> np.ndarray:
    """Level in dBFS of frames of ``k`` hops starting every ``hop`` samples (last frames shorter).

    Sums of squares are taken per hop in chunks, so an hour at 16 kHz never squares all at once.
    """
    chunk -= chunk % hop
    sums = np.concatenate([_hop_sums(y[i:i + chunk], hop) for i in range(0, y.size, chunk)])
    counts = np.full(sums.size, hop, dtype=np.float64)
    counts[-1] = y.size - hop * (sums.size - 1)
    cs, cc = np.concatenate([[0.0], np.cumsum(sums)]), np.concatenate([[0.0], np.cumsum(counts)])
    j = np.arange(sums.size)
    end = np.minimum(j + k, sums.size)
    power = (cs[end] - cs[j]) / (cc[end] - cc[j])
    return 10 * np.log10(np.maximum(power, 1e-12))


def _hop_sums(x: np.ndarray, hop: int) -> np.ndarray:
    x = x.astype(np.float64)
    pad = (-x.size) % hop
    return np.square(np.pad(x, (0, pad))).reshape(-1, hop).sum(axis=1)


# --- silero ---------------------------------------------------------------------------------

def silero_installed() -> bool:
    """Whether the silero-vad package can be imported (its model file ships in the wheel)."""
    return importlib.util.find_spec("silero_vad") is not None


@functools.lru_cache(maxsize=None)
def _silero():
    """(model, get_speech_timestamps_from_probs), loaded once per process.

    The model keeps recurrent state between calls, so one process must not share it across threads.
    """
    import torch
    threads = torch.get_num_threads()
    try:
        import silero_vad
        with warnings.catch_warnings():
            # Its loader uses deprecated importlib/torch.jit calls; nothing a caller can act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            model = silero_vad.load_silero_vad()
    except ImportError as e:
        raise ImportError("vad 'silero' needs the silero-vad package: pip install silero-vad "
                          "(or use detector='energy')") from e
    finally:
        # silero_vad sets torch to one thread on import; that is not its call to make for the process.
        torch.set_num_threads(threads)
    return model, silero_vad.get_speech_timestamps_from_probs


@register("silero")
@dataclass(frozen=True)
class SileroVAD(Detector):
    """The silero-vad network: speech probability per 32 ms frame, hysteresis thresholds.

    The network is recurrent, so it runs frame after frame (~80x real time on one core for one
    stream); to do more per step, each clip is cut into pieces of about ``piece_s`` (at the
    quietest 0.3 s near each nominal boundary), each preceded by ``context_s`` of the audio before
    it, and the pieces of all clips given to :meth:`Detector.many` run together as the rows of
    batches of at most ``max_batch_s`` of padded audio (which bounds memory on hour-long calls).
    Pieces whose frames, context included, are all below ``silence_dbfs`` are not run: their
    frames get probability 0 (None runs everything). ``piece_s`` >= the clip length gives exactly
    silero's own single-pass result. The model is loaded once per process (the wheel ships it: no
    download) and is not thread-safe.

    ``piece_s`` = 2 is the fastest setting whose segments overlap a one-pass run's by >= 0.98
    (IoU of speech time) on ~10 min of real speech: four 2.5 min "calls" of EmoDB utterances with
    0.3-3 s of -60 dBFS noise between them and a 20 s digital-silence hold in each. x real time,
    one torch thread, by CPU time, best of 5 interleaved runs on a shared 2-core machine (+-15%;
    2 and 4 tie for detect_many within that)::

        piece_s   detect (per clip)   detect_many (4 clips)   IoU EmoDB   IoU synthetic
           1             619                  721                0.983        0.763
           2             588                  783                0.985        0.747
           4             530                  831                0.988        0.771
           8             401                  699                0.993        0.794

    On synthetic calls (``ser_ray.synth.synth_call``) no piece length agrees with one pass, because
    one pass is itself erratic there: over minutes of that non-speech signal the network's state
    drifts until it marks 98% of one call as speech and 23% of another, where 2 s pieces and the
    energy detector both find ~90%. Measured by ``.venv/bin/python benchmarks/vad_pieces.py
    --audio emodb --reps 5`` (and ``--audio synth``).
    """

    threshold: float = 0.5
    neg_threshold: float | None = None  # leaves speech below this; None = threshold - 0.15
    pad_s: float = 0.03                 # padding added on each side of a segment
    piece_s: float = 2.0
    context_s: float = 0.5
    max_batch_s: float = 600.0
    silence_dbfs: float | None = -60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.threshold < 1 or self.piece_s <= 0 or self.context_s < 0 or self.pad_s < 0:
            raise ValueError("vad 'silero': need 0 < threshold < 1, piece_s > 0, context_s >= 0, pad_s >= 0")
        if self.max_batch_s <= 0:
            raise ValueError(f"vad 'silero': max_batch_s must be > 0, got {self.max_batch_s}")

    def regions(self, y: np.ndarray, sr: int) -> list[Segment]:
        return self.regions_many([y], sr)[0]

    def regions_many(self, ys: Sequence[np.ndarray], sr: int) -> list[list[Segment]]:
        if sr not in (8000, 16000):
            raise ValueError(f"vad 'silero' takes 8000 or 16000 Hz audio, got {sr} Hz; resample first")
        model, from_probs = _silero()
        frame = 512 if sr == 16000 else 256
        probs = _silero_probs(model, ys, sr, frame, per=round(self.piece_s * sr / frame),
                              ctx=round(self.context_s * sr / frame), silence_db=self.silence_dbfs,
                              budget=max(1, round(self.max_batch_s * sr / frame)))
        out = []
        for y, p in zip(ys, probs):
            found = from_probs(p.tolist(), sampling_rate=sr, threshold=self.threshold,
                               neg_threshold=self.neg_threshold, min_speech_duration_ms=1000 * self.min_speech_s,
                               min_silence_duration_ms=1000 * self.min_silence_s, speech_pad_ms=1000 * self.pad_s,
                               audio_length_samples=y.size)
            out.append([(t["start"] / sr, t["end"] / sr) for t in found])
        return out


# Batched CPU kernels round differently for small batches (on x86 with one torch thread, 1, 2-3,
# 4-15 and 16+ rows each give their own last bits; with two, 1, 2-3 and 4+). A batch padded to at
# least this many rows, or holding a single row, gives a row the same output whatever else is in
# it, so detect_many equals detect bit for bit; a short clip on its own pays for the padding.
_MIN_ROWS = 16


def _silero_probs(model, ys: Sequence[np.ndarray], sr: int, frame: int, per: int, ctx: int,
                  silence_db: float | None, budget: int) -> list[np.ndarray]:
    """Speech probability (float32) of every ``frame``-sample frame of each of ``ys``.

    Each signal is cut into pieces of ``per`` frames give or take half (:func:`_pieces`); the
    pieces of all signals run as rows of batches of at most ``budget`` frames (rows x longest
    row), longest rows first so little padding is wasted. The network is causal, so zeros padded
    after a shorter row do not change its frames. Pieces all below ``silence_db`` are skipped.
    """
    import torch
    probs = [np.zeros(-(-y.size // frame), dtype=np.float32) for y in ys]
    rows = []  # (signal, lead, a, b): frames a..b of the signal, after `lead` frames of context
    for s, y in enumerate(ys):
        level = _frame_db(y, frame, 1)
        for lead, a, b in _pieces(level, per, ctx, smooth=max(1, round(0.3 * sr / frame))):
            # Context counts: after loud speech the network stays up for a few frames of silence.
            if silence_db is None or level[a - lead:b].max() >= silence_db:
                rows.append((s, lead, a, b))
    rows.sort(key=lambda r: r[1] + r[3] - r[2], reverse=True)
    i = 0
    while i < len(rows):
        width = rows[i][1] + rows[i][3] - rows[i][2]
        fit = budget // width
        fit = fit if fit >= _MIN_ROWS else 1  # too long to pad to _MIN_ROWS: always alone instead
        group = rows[i:i + fit]
        i += len(group)
        batch = np.zeros((min(fit, max(len(group), _MIN_ROWS)), width * frame), dtype=np.float32)
        for k, (s, lead, a, b) in enumerate(group):
            chunk = ys[s][(a - lead) * frame: b * frame]
            batch[k, :chunk.size] = chunk
        with torch.inference_mode():
            out = model.audio_forward(torch.from_numpy(batch), sr).numpy()
        for k, (s, lead, a, b) in enumerate(group):
            probs[s][a:b] = out[k, lead: lead + b - a]
    return probs


def _pieces(level: np.ndarray, per: int, ctx: int, smooth: int) -> list[tuple[int, int, int]]:
    """``(lead, a, b)``: frames ``a..b`` of a signal with frame levels ``level`` (dB), about ``per``
    frames each, cut where the level smoothed over ``smooth`` frames is lowest near each nominal
    boundary, and ``lead`` (<= ``ctx``) frames of context before each.

    Cutting in a pause means each piece starts the way a recording does, so the network's state
    at a cut matches what one pass would have; the context frames warm it up further.
    """
    n = level.size
    cuts = [0]
    if n > per:
        # Smoothed so a cut lands in a pause rather than in the gap before a consonant.
        level = uniform_filter1d(level, smooth, mode="nearest")
        reach = max(1, per // 2)
        for b in range(per, n - reach, per):
            lo = max(b - reach, cuts[-1] + reach)
            if lo < b + reach:
                cuts.append(lo + int(np.argmin(level[lo:b + reach])))
    cuts.append(n)
    return [(min(ctx, a), a, b) for a, b in zip(cuts, cuts[1:])]


# --- analysis windows -----------------------------------------------------------------------

def windows(segments: Sequence[Segment], length_s: float, hop_s: float | None = None, min_s: float = 0.0,
            *, align_end: bool = True) -> list[Segment]:
    """Analysis windows ``(start_s, end_s)`` over speech only, sorted by start.

    Windows of ``length_s`` start every ``hop_s`` (None = ``length_s``, no overlap) from each
    segment's start and never cross its end. With ``align_end`` a segment whose last regular
    window stops short of its end gets one more window ending exactly at the end, so no speech is
    left unscored. A segment shorter than ``length_s`` gives one window of its own length if it
    lasts at least ``min_s``, else none.
    """
    hop_s = length_s if hop_s is None else hop_s
    if not (length_s > 0 and hop_s > 0 and min_s >= 0) or not all(map(math.isfinite, (length_s, hop_s, min_s))):
        raise ValueError(f"windows: need length_s > 0, hop_s > 0, min_s >= 0, got {length_s}, {hop_s}, {min_s}")
    eps = 1e-9
    out: list[Segment] = []
    for start, end in segments:
        start, end = float(start), float(end)
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
            raise ValueError(f"windows: segment ({start}, {end}) is not a finite 0 <= start < end span in seconds")
        if end - start < length_s - eps:
            if end - start >= min_s - eps:
                out.append((start, end))
            continue
        n = int((end - start - length_s) / hop_s + eps) + 1
        out += [(start + i * hop_s, start + i * hop_s + length_s) for i in range(n)]
        if align_end and out[-1][1] < end - 1e-6:
            out.append((end - length_s, end))
    return sorted(out)
