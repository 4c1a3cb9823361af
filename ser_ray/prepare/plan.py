"""Planning on the driver: resolve each input's corpus, then walk it lazily and cut it into units
of a few files (or one tar shard) as names stream in."""

from __future__ import annotations

import os
from typing import Any, Iterator

from ser_ray.config import PrepareConfig
from ser_ray.runtime import content_id
from ser_ray.storage import (Storage, expand_braces, glob_root, has_glob, is_s3, is_table, is_tar,
                             join, read_table, relpath, sample_paths)


SIDECAR_EXTENSIONS = (".json", ".txt", ".cls", ".cls2", ".id", ".key")


def resolve_corpus(uri: str, requested: str, storage: Storage) -> str:
    """The corpus an input is read as: the requested one, or detected from a sample of names."""
    if is_table(uri):
        return "manifest"
    if requested != "auto":
        if requested not in ("sidecar", "manifest"):
            from ser_ray.corpora import get_corpus
            get_corpus(requested)  # unknown names fail here, before any work starts
        return requested
    from ser_ray.corpora import detect_corpus

    sample = sample_paths(storage, uri)
    try:
        return detect_corpus(sample)
    except ValueError as exc:
        if is_tar(uri) and any(p.endswith(".json") for p in sample):
            return "sidecar"  # WebDataset shard whose labels live in JSON sidecars
        raise ValueError(f"--input {uri}: cannot recognise the corpus layout ({exc}). "
                         f"Pass --corpus NAME, or a manifest (CSV/Parquet with path,label)."
                         ) from None


def plan_inputs(cfg: PrepareConfig, storage: Storage) -> list[dict[str, Any]]:
    """Inputs -> sources (a folder, glob, tar shard, table or single file), each with its corpus.

    Nothing is listed here beyond the sample that corpus detection reads: a missing input fails
    before any work starts, and :func:`iter_units` lists each source lazily later.
    """
    sources: list[dict[str, Any]] = []
    for index, given in enumerate(cfg.inputs):
        for uri in expand_braces(given):
            uri = uri.rstrip("/") if uri not in ("/",) else uri
            if not is_s3(uri):  # workers may run elsewhere: resolve ~ and cwd here
                uri = os.path.abspath(os.path.expanduser(uri))
            base = {"input": index}
            if has_glob(uri):
                root, pattern = glob_root(uri)
                corpus = resolve_corpus(root, cfg.corpus, storage)
                sources.append({**base, "kind": "glob", "root": root, "uri": root,
                                "pattern": pattern, "corpus": corpus})
            elif is_table(uri) or is_tar(uri):
                if not storage.exists(uri):
                    raise FileNotFoundError(f"--input {uri}: no such file or object")
                corpus = resolve_corpus(uri, cfg.corpus, storage)
                kind = "table" if is_table(uri) else "tar"
                sources.append({**base, "kind": kind, "root": uri, "uri": uri, "corpus": corpus})
            elif storage.exists_dir(uri):
                corpus = resolve_corpus(uri, cfg.corpus, storage)
                sources.append({**base, "kind": "walk", "root": uri, "uri": uri,
                                "corpus": corpus})
            elif storage.exists(uri):  # a single file
                parent = uri.rsplit("/", 1)[0] if is_s3(uri) else os.path.dirname(uri)
                corpus = resolve_corpus(uri, cfg.corpus, storage)
                sources.append({**base, "kind": "files", "root": parent, "corpus": corpus,
                                "relpaths": [relpath(parent, uri)]})
            else:
                raise FileNotFoundError(f"--input {uri}: no such file, folder or prefix "
                                        f"(check the path, or credentials/endpoint for s3://)")
    return sources


def make_unit(kind: str, root: str, corpus: str, **payload: Any) -> dict[str, Any]:
    """A work unit; its id is a hash of what it holds, so every run cuts the same ids."""
    body = {"kind": kind, "root": root, "corpus": corpus, **payload}
    return {**body, "unit_id": content_id(body)}


def iter_units(source: dict[str, Any], storage: Storage,
               files_per_task: int) -> Iterator[dict[str, Any]]:
    """A source -> work units of at most ``files_per_task`` files (tar shards whole), lazily.

    A folder is walked once, streaming; at most one open chunk per group is held. Files are
    grouped as if each top-level sub-folder were listed on its own and the top-level files
    apart, so chunks (and unit ids) do not depend on what else the input holds: a rerun, or an
    output written by an earlier version, resumes unit by unit.
    """
    root, corpus = source["root"], source["corpus"]
    kind = source["kind"]
    if kind == "tar":
        yield make_unit("tar", root, corpus, uri=source["uri"])
        return
    if kind == "table":
        yield from _table_units(source, storage, files_per_task)
        return
    if kind == "files":
        found: Iterator[str] = (join(root, r) for r in source["relpaths"])
    elif kind == "glob":
        found = storage.glob(join(root, source["pattern"]))
    else:
        found = storage.walk(source["uri"])
    grouped = kind == "walk"
    chunks: dict[str | None, list[str]] = {}  # group (top-level folder; None = root) -> chunk
    for uri in found:
        rel = relpath(root, uri)
        if is_tar(rel):  # shards found inside a folder are units of their own
            yield make_unit("tar", join(root, rel), corpus, uri=join(root, rel))
            continue
        group = rel.split("/", 1)[0] if grouped and "/" in rel else None
        if group is not None and group not in chunks:
            # A walk lists each sub-folder's files together: the previous one is complete.
            for g in [g for g in chunks if g is not None]:
                yield make_unit("files", root, corpus, relpaths=chunks.pop(g))
        chunk = chunks.setdefault(group, [])
        chunk.append(rel)
        if len(chunk) == files_per_task:
            yield make_unit("files", root, corpus, relpaths=chunks.pop(group))
    for chunk in chunks.values():
        if chunk:
            yield make_unit("files", root, corpus, relpaths=chunk)


def _table_units(source: dict, storage: Storage,
                 files_per_task: int) -> Iterator[dict[str, Any]]:
    from ser_ray.corpora.manifest import load_manifest

    uri = source["uri"]
    base = uri.rsplit("/", 1)[0] if is_s3(uri) else os.path.dirname(uri)
    entries = []
    seen: dict[str, int] = {}
    for row, (path, utt) in enumerate(load_manifest(read_table(uri, storage), base)):
        fields = {"speaker": utt.speaker, "sex": utt.sex, "raw_label": utt.raw_label,
                  "label": utt.label, "extra": utt.extra}
        if path in seen:  # a repeated row: one quarantine row says so, the file is read once
            fields["duplicate_of"] = seen[path]
        seen.setdefault(path, row)
        entries.append([path, fields])
        if len(entries) == files_per_task:
            yield make_unit("entries", base, "manifest", entries=entries)
            entries = []
    if entries:
        yield make_unit("entries", base, "manifest", entries=entries)


def hidden(rel: str) -> bool:
    # ".." is no hidden name: a tar member named ../x.wav is quarantined as outside_root
    return any(p.startswith(".") and p not in (".", "..") for p in rel.split("/"))
