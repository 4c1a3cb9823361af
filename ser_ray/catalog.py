"""What ser-ray knows by name, each with its one-line doc: ``ser-ray list``."""

from __future__ import annotations

import re

KINDS = ("extractors", "models", "label-sets", "corpora", "protocols", "augment-steps")


def first_sentence(doc: str, width: int = 100) -> str:
    """The first sentence of a docstring, on one line, at most ``width`` characters."""
    text = " ".join((doc or "").replace("``", "").split())
    m = re.match(r"(.+?\.)(\s|$)", text)
    text = m.group(1) if m else text
    return text if len(text) <= width else text[:width - 3].rstrip(" ,;(") + "..."


def catalog(kind: str) -> list[tuple[str, str]]:
    """``(name, one-line doc)`` of every registered thing of ``kind`` (one of :data:`KINDS`)."""
    if kind == "extractors":
        from ser_ray.features import available
        from ser_ray.features.base import extractor_doc

        return [(n, first_sentence(extractor_doc(n))) for n in available()]
    if kind == "models":
        from ser_ray.models import available_models, get_model_spec

        return [(n, f"[{get_model_spec(n).kind}] {first_sentence(get_model_spec(n).doc)}")
                for n in available_models()]
    if kind == "label-sets":
        from ser_ray.labels import LABEL_SETS

        return [(n, ", ".join(ls.labels) + (" (label prefixed by the speaker's sex)"
                                            if ls.needs_sex else ""))
                for n, ls in sorted(LABEL_SETS.items())]
    if kind == "corpora":
        from ser_ray.corpora import CORPORA

        return [(n, f"file names {c.pattern}") for n, c in sorted(CORPORA.items())]
    if kind == "protocols":
        from ser_ray.learn.splits import PROTOCOLS

        return [(n, first_sentence(p.split.__doc__) + (" Speakers shared: optimistic."
                                                       if p.shares_speakers else ""))
                for n, p in PROTOCOLS.items()]
    if kind == "augment-steps":
        from ser_ray.learn.augment import available_steps
        from ser_ray.learn.augment.steps import step_class

        return [(n, first_sentence(step_class(n).__doc__)) for n in available_steps()]
    raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")


def names(kind: str) -> list[str]:
    """The registered names of ``kind``: what the CLI's choices and help list."""
    return [n for n, _ in catalog(kind)]


def render(kinds=KINDS) -> str:
    lines = []
    for kind in kinds:
        rows = catalog(kind)
        width = max(len(n) for n, _ in rows)
        lines.append(f"{kind}:")
        lines += [f"  {n:<{width}}  {doc}" for n, doc in rows]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
