"""The labelling page of a ``ser-ray sample`` folder: ``label.html``.

One self-contained file (inline CSS and script, no network) that works from a ``file://`` URL:
a player per clip (``clips/NNNN.flac`` beside it), the model's prediction, the team's labels as
buttons, a note field, progress, and **Save sheet**, which downloads the sheet with the
``label`` and ``note`` columns filled as ``sheet.csv`` (every other column as written). Work in
progress is kept in the browser's local storage, so closing the page loses nothing.

Keys: 1-9 label the current clip with the n-th label, space plays it, j/k (or the arrows) move
to the next/previous clip.
"""

from __future__ import annotations

import html
import json
from typing import Sequence

import pandas as pd

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem auto;
max-width:64rem;padding:0 1rem;color:#1b1f24}
.row{border:1px solid #d0d7de;border-radius:6px;padding:.5rem .8rem;margin:.5rem 0}
.row.current{border-color:#1f6feb;box-shadow:0 0 0 2px #1f6feb33}
.row.done{background:#f6f8fa}.meta{color:#57606a;font-size:.9rem}
button.label{margin:.15rem;padding:.25rem .6rem;border:1px solid #d0d7de;border-radius:5px;
background:#fff;cursor:pointer}button.label.on{background:#1f6feb;color:#fff;border-color:#1f6feb}
#bar{position:sticky;top:0;background:#fff;padding:.5rem 0;border-bottom:1px solid #d0d7de}
input.note{width:20rem}kbd{border:1px solid #d0d7de;border-radius:3px;padding:0 .25rem}
"""

_SCRIPT = """
const SHEET = JSON.parse(document.getElementById('sheet').textContent);
const LABELS = JSON.parse(document.getElementById('labels').textContent);
const KEY = 'ser-ray-labels:' + SHEET.id;
const saved = JSON.parse(localStorage.getItem(KEY) || '{}');
const rows = [...document.querySelectorAll('.row')];
let current = 0;
function state(i) { return saved[SHEET.rows[i].segment_id] || {label: '', note: ''}; }
function store() { localStorage.setItem(KEY, JSON.stringify(saved)); }
function show() {
  let done = 0;
  rows.forEach((r, i) => {
    const s = state(i);
    r.classList.toggle('current', i === current);
    r.classList.toggle('done', !!s.label);
    r.querySelectorAll('button.label').forEach(b => b.classList.toggle('on', b.dataset.label === s.label));
    const note = r.querySelector('input.note');
    if (document.activeElement !== note) note.value = s.note;
    if (s.label) done++;
  });
  document.getElementById('progress').textContent = done + ' / ' + rows.length + ' labelled';
}
function setLabel(i, label) {
  const id = SHEET.rows[i].segment_id;
  saved[id] = Object.assign(state(i), {label: label});
  store(); show();
}
function go(i) {
  current = Math.max(0, Math.min(rows.length - 1, i));
  rows[current].scrollIntoView({block: 'nearest'});
  show();
}
rows.forEach((r, i) => {
  r.addEventListener('click', () => { current = i; show(); });
  r.querySelectorAll('button.label').forEach(b => b.addEventListener('click', e => {
    e.stopPropagation(); current = i; setLabel(i, b.dataset.label); }));
  r.querySelector('input.note').addEventListener('input', e => {
    const id = SHEET.rows[i].segment_id;
    saved[id] = Object.assign(state(i), {note: e.target.value}); store(); show(); });
});
document.addEventListener('keydown', e => {
  if (e.target.tagName === 'INPUT') return;
  const n = parseInt(e.key, 10);
  if (n >= 1 && n <= LABELS.length) { setLabel(current, LABELS[n - 1]); go(current + 1); e.preventDefault(); }
  else if (e.key === 'j' || e.key === 'ArrowDown') { go(current + 1); e.preventDefault(); }
  else if (e.key === 'k' || e.key === 'ArrowUp') { go(current - 1); e.preventDefault(); }
  else if (e.key === ' ') {
    const a = rows[current].querySelector('audio');
    if (a) { a.paused ? a.play() : a.pause(); }
    e.preventDefault();
  }
});
function cell(v) {
  const s = v === null || v === undefined ? '' : String(v);
  return /[",\\r\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}
function csv() {
  const cols = SHEET.columns;
  const lines = [cols.map(cell).join(',')];
  SHEET.rows.forEach((row, i) => {
    const s = state(i);
    const out = Object.assign({}, row, {label: s.label, note: s.note});
    lines.push(cols.map(c => cell(out[c])).join(','));
  });
  return lines.join('\\n') + '\\n';
}
document.getElementById('save').addEventListener('click', () => {
  const url = URL.createObjectURL(new Blob([csv()], {type: 'text/csv'}));
  const a = document.createElement('a');
  a.href = url; a.download = 'sheet.csv'; document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
});
show();
"""


def _e(v) -> str:
    return html.escape("" if v is None or (isinstance(v, float) and v != v) else str(v), quote=True)


def _json(obj) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(obj).replace("</", "<\\/")


def render_label_page(sheet: pd.DataFrame, labels: Sequence[str]) -> str:
    """The page for ``sheet`` (``score.sample``'s columns, each cell as its CSV text), with
    ``labels`` as the buttons."""
    rows = json.loads(sheet.to_json(orient="records"))
    data = {"id": "|".join(sheet["segment_id"].astype(str).head(3)) + f"|{len(sheet)}",
            "columns": list(sheet.columns), "rows": rows}
    keys = " ".join(f"<kbd>{k + 1}</kbd> {_e(lab)}" for k, lab in enumerate(labels[:9]))
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>Label {len(sheet)} segments</title><style>{_CSS}</style></head><body>",
           f"<h1>Label {len(sheet)} segments</h1>",
           "<p>Listen to each clip (the segment starts at the time shown; a second of context "
           "either side) and choose what the customer sounds like. Nothing leaves this page "
           "until you save the sheet.</p>",
           f'<div id="bar"><span id="progress"></span> · <button id="save">Save sheet</button> '
           f'· keys: {keys}, <kbd>space</kbd> play, <kbd>j</kbd>/<kbd>k</kbd> next/previous</div>']
    for i, r in enumerate(rows):
        player = (f'<audio class="clip" controls preload="none" src="{_e(r["clip"])}"></audio>'
                  if r.get("clip") else '<span class="meta">no clip (the call could not be read '
                                        'again)</span>')
        buttons = "".join(f'<button class="label" data-label="{_e(lab)}">{_e(lab)}</button>'
                          for lab in labels)
        out.append(
            f'<div class="row" id="row-{i}" data-segment="{_e(r["segment_id"])}">'
            f'<div class="meta">{i + 1}. call <code>{_e(r["call_id"])}</code>, night '
            f'{_e(r["run_date"])}, {float(r["start_s"]):.1f}-{float(r["end_s"]):.1f} s (in the clip '
            f'from {_e(r["clip_start_s"])} s); the model says <b>{_e(r["predicted"])}</b> '
            f'({float(r["probability"]):.0%}); chosen as {_e(r["why"])}</div>'
            f'{player}<div>{buttons} <input class="note" placeholder="note"></div></div>')
    out += [f'<script type="application/json" id="sheet">{_json(data)}</script>',
            f'<script type="application/json" id="labels">{_json(list(labels))}</script>',
            f"<script>{_SCRIPT}</script>", "</body></html>"]
    return "\n".join(out)
