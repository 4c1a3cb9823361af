"""Synthetic emotional speech for demos and tests (``voice``), written as the real corpora name
their files (``corpus``) or as a night of contact-centre calls (``backlog``). Not speech: numbers
measured on it say nothing about real corpora."""

from ser_ray.synth.backlog import BACKLOG_BAD_KINDS, BACKLOG_DATE, synthesize_backlog
from ser_ray.synth.corpus import LAYOUTS, synthesize_corpus
from ser_ray.synth.voice import EMOTIONS, make_speakers, prosody, synth_call, synth_utterance

__all__ = ["BACKLOG_BAD_KINDS", "BACKLOG_DATE", "EMOTIONS", "LAYOUTS", "make_speakers", "prosody",
           "synth_call", "synth_utterance", "synthesize_backlog", "synthesize_corpus"]
