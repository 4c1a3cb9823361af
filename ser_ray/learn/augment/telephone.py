"""The ``telephone`` augmentation step: each copy goes through a telephone line (``channel``) whose
codec, bitrate, level, clipping and packet loss are drawn from configured ranges."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ser_ray.channel import LINE_CODECS, LINE_RATE, Line, telephone
from ser_ray.learn.augment.steps import Step, register_step


@register_step("telephone")
@dataclass(frozen=True)
class Telephone(Step):
    """Band-pass ``low_hz``-``high_hz``, ``rate`` (8 kHz) and back, one codec drawn from
    ``codecs`` (``mp3``/``opus`` at a bitrate drawn in [min_kbps, max_kbps]); then, each with its
    own probability: a level change in [min_gain_db, max_gain_db] (``gain_p``), clipping at a
    fraction of the peak in [min_clip, max_clip] (``clip_p``), packet loss of a share of 20 ms
    frames in [min_loss, max_loss] with concealment (``loss_p``)."""

    codecs: tuple[str, ...] = ("mulaw", "alaw", "mp3", "opus")
    min_kbps: float = 8.0
    max_kbps: float = 16.0
    low_hz: float = 300.0
    high_hz: float = 3400.0
    rate: int = LINE_RATE
    gain_p: float = 0.5
    min_gain_db: float = -10.0
    max_gain_db: float = 6.0
    clip_p: float = 0.2
    min_clip: float = 0.3
    max_clip: float = 0.8
    loss_p: float = 0.3
    min_loss: float = 0.01
    max_loss: float = 0.1

    def validate(self) -> None:
        if not self.codecs:
            raise ValueError("augment step telephone: codecs is empty; give one or more of "
                             f"{list(LINE_CODECS)}")
        bad = [c for c in self.codecs if c not in LINE_CODECS]
        if bad:
            raise ValueError(f"augment step telephone: codecs {bad} are not among "
                             f"{list(LINE_CODECS)}")
        for p in ("gain_p", "clip_p", "loss_p"):
            if not 0.0 <= getattr(self, p) <= 1.0:
                raise ValueError(f"augment step telephone: {p}={getattr(self, p)} must be in "
                                 f"[0, 1]")
        for lo, hi in (("min_kbps", "max_kbps"), ("min_gain_db", "max_gain_db"),
                       ("min_clip", "max_clip"), ("min_loss", "max_loss")):
            self._range(lo, hi)
        if self.min_kbps <= 0 or not 0 < self.min_clip <= 1 or self.max_clip > 1:
            raise ValueError("augment step telephone: kbps must be > 0 and clip levels in (0, 1]")
        if not (0 <= self.min_loss and self.max_loss < 1):
            raise ValueError("augment step telephone: loss shares must be in [0, 1)")
        Line(codec=self.codecs[0], low_hz=self.low_hz, high_hz=self.high_hz, rate=self.rate)

    def line(self, rng: np.random.Generator) -> Line:
        """The line one copy goes through (every draw from ``rng``)."""
        codec = str(self.codecs[int(rng.integers(len(self.codecs)))])
        kbps = float(rng.uniform(self.min_kbps, self.max_kbps))
        gain = float(rng.uniform(self.min_gain_db, self.max_gain_db))
        clip = float(rng.uniform(self.min_clip, self.max_clip))
        loss = float(rng.uniform(self.min_loss, self.max_loss))
        use = rng.random(3) < (self.gain_p, self.clip_p, self.loss_p)
        return Line(codec=codec, kbps=kbps, low_hz=self.low_hz, high_hz=self.high_hz,
                    rate=self.rate, gain_db=gain if use[0] else 0.0,
                    clip=clip if use[1] else None, loss=loss if use[2] else 0.0)

    def apply(self, y, sr, rng):
        return telephone(y, sr, self.line(rng), rng)
