"""``report.html``: an evaluation report folder on one self-contained page, to look at and listen to.

The page is built from the folder's own files (``report.json``, ``predictions.csv`` and the PNG
plots, inlined as base64), so it always shows what they say: the metrics, the confusion matrix,
accuracy per class and per speaker, the reliability diagram, every misclassified clip with an audio
player, its labels and top probabilities (filter by class, speaker or text; click a column header to
sort), and, after ``evaluate --streams``, the keyword-spotting section and its DET curve.

Clips are embedded as ``data:`` URIs while small (:data:`EMBED_CLIP_BYTES` each, up to
:data:`EMBED_TOTAL_BYTES` per page, so the page keeps working when copied alone), else referenced
relative to the page (or by absolute ``file:`` URI when no relative path exists, e.g. another
drive). Relative paths in ``predictions.csv`` are read against the working directory, as the run
that wrote them gave them. Nothing on the page reaches the network, and every string from the data
is escaped; a Content-Security-Policy lets only the page's own script run.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from speechrnn.io import atomic_write_text
from speechrnn.reports import speaker_group

EMBED_CLIP_BYTES = 64 * 1024
"""A clip file up to this size (about 2 s of 16 kHz 16-bit wav) is embedded in the page..."""
EMBED_TOTAL_BYTES = 4 * 1024 * 1024
"""...while the clips embedded so far total no more than this; later ones are referenced."""
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
               ".opus": "audio/ogg", ".m4a": "audio/mp4", ".webm": "audio/webm"}  # fmt: skip
PLOTS = {
    "confusion_matrix.png": "confusion matrix, rows normalised",
    "reliability_diagram.png": "reliability diagram",
    "det_curve.png": "DET curve of keyword spotting in streams",
}


@dataclass(frozen=True)
class Clip:
    """One row of ``predictions.csv``: a clip, its labels and probabilities."""

    path: str
    true_label: str
    predicted_label: str
    probability: float
    true_probability: float | None
    top: list[tuple[str, float]]
    speaker: str


def read_clips(predictions: Path) -> list[Clip] | None:
    """The clips of a ``predictions.csv``; None when it is a per-step task's table (no clip labels)."""
    with open(predictions, newline="") as handle:
        reader = csv.DictReader(handle)
        if "predicted_label" not in (reader.fieldnames or []):
            return None
        return [
            Clip(
                path=row["path"],
                true_label=row["true_label"],
                predicted_label=row["predicted_label"],
                probability=float(row["probability"]),
                true_probability=float(row["true_probability"]) if row.get("true_probability") else None,
                top=[(str(label), float(p)) for label, p in json.loads(row.get("top_probabilities") or "[]")],
                speaker=row.get("speaker") or "",
            )
            for row in reader
        ]


class AudioSources:
    """The ``src`` of each clip's player on a page in ``folder``: embedded while small and within
    the page's budget, else a path relative to the page, else an absolute ``file:`` URI."""

    def __init__(self, folder: Path, clip_bytes: int = EMBED_CLIP_BYTES, total_bytes: int = EMBED_TOTAL_BYTES):
        self.folder, self.clip_bytes, self.left = Path(folder).resolve(), clip_bytes, total_bytes

    def __call__(self, path: str) -> str | None:
        """The source of the clip at ``path`` (relative: to the working directory); None when no such file."""
        clip = Path(path).absolute()
        if not clip.is_file():
            return None
        size = clip.stat().st_size
        if size <= self.clip_bytes and size <= self.left:
            self.left -= size
            kind = AUDIO_TYPES.get(clip.suffix.lower(), "application/octet-stream")
            return f"data:{kind};base64,{base64.b64encode(clip.read_bytes()).decode()}"
        try:
            return urllib.parse.quote(Path(os.path.relpath(clip, self.folder)).as_posix())
        except ValueError:
            return clip.resolve().as_uri()


def write_report_page(
    folder: str | os.PathLike, clip_bytes: int = EMBED_CLIP_BYTES, total_bytes: int = EMBED_TOTAL_BYTES
) -> Path:
    """Write ``report.html`` (atomically) into the report ``folder`` from the files there; returns its path."""
    folder = Path(folder)
    report = json.loads((folder / "report.json").read_text())
    clips = read_clips(folder / "predictions.csv") if (folder / "predictions.csv").is_file() else None
    plots = {name: (folder / name).read_bytes() for name in PLOTS if (folder / name).is_file()}
    page = render_report_page(report, clips, plots, AudioSources(folder, clip_bytes, total_bytes))
    return atomic_write_text(folder / "report.html", page)


def render_report_page(
    report: dict[str, Any],
    clips: Sequence[Clip] | None,
    plots: dict[str, bytes],
    sources: AudioSources | None = None,
) -> str:
    """The page's HTML: ``report`` (``report.json``), the ``clips`` of ``predictions.csv`` (None for a
    per-step task), the PNG ``plots`` by file name, and ``sources`` for the clips' players."""
    title = str(report.get("title") or "Evaluation report")
    sections = [
        _summary(report),
        _section("Confusion matrix", _plot(plots, "confusion_matrix.png") + _confusions(report)),
        _section("Accuracy per class", _per_class(report)),
    ]
    if "per_speaker_accuracy" in report:
        sections.append(_section("Accuracy per speaker", _per_speaker(report)))
    calibration = f"<p>Expected calibration error: {report['expected_calibration_error']:.4f}.</p>"
    sections.append(_section("Calibration", calibration + _plot(plots, "reliability_diagram.png")))
    if clips is not None:
        wrong = sorted((c for c in clips if c.true_label != c.predicted_label), key=lambda c: -c.probability)
        sections.append(_section("Misclassified clips", _clip_list(wrong, len(clips), sources)))
    else:
        sections.append(_section("Sequences", "<p>Frame accuracy of each sequence: <code>predictions.csv</code>.</p>"))
    if report.get("streams"):
        sections.append(_streams(report, plots))
    links = re.findall(r'<section id="([^"]+)"><h2>([^<]+)</h2>', "".join(sections))
    contents = " · ".join(f'<a href="#{anchor}">{heading}</a>' for anchor, heading in links)
    policy = (
        "default-src 'none'; img-src data:; media-src data: file: 'self'; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()}'"
    )
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{STYLE}</style></head>',
        f"<body><h1>{escape(title)}</h1><nav>{contents}</nav>",
        *sections,
        f"<script>{SCRIPT}</script></body></html>",
        "",
    ])  # fmt: skip


def _section(heading: str, body: str, anchor: str = "") -> str:
    anchor = anchor or heading.lower().replace(" ", "-")
    return f'<section id="{escape(anchor)}"><h2>{escape(heading)}</h2>\n{body}\n</section>'


def _plot(plots: dict[str, bytes], name: str) -> str:
    if name not in plots:
        return ""
    data = base64.b64encode(plots[name]).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(PLOTS[name])}"></figure>'


def _cell(value: Any, digits: int = 4) -> str:
    """A table cell; numbers carry their value in ``data-sort`` so columns sort numerically."""
    if isinstance(value, bool) or value is None:
        return f"<td>{'' if value is None else escape(str(value))}</td>"
    if isinstance(value, int):
        return f'<td class="num" data-sort="{value}">{value}</td>'
    if isinstance(value, float):
        return f'<td class="num" data-sort="{value!r}">{value:.{digits}f}</td>'
    return f"<td>{escape(str(value))}</td>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str = "", sortable: bool = True) -> str:
    ident = f' id="{escape(table_id)}"' if table_id else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    kind = ' class="sortable"' if sortable else ""
    return f"<table{ident}{kind}><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


METRICS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1",
           "cohen_kappa": "Cohen's kappa", "log_loss": "log loss", "bits_per_step": "bits per step",
           "expected_calibration_error": "expected calibration error"}  # fmt: skip


def _summary(report: dict[str, Any]) -> str:
    counted = f"{report['examples']} examples"
    if "sequences" in report:
        counted = f"{report['examples']} frames of {report['sequences']} sequences"
    lines = [f"<p>{escape(counted)}, {len(report['class_names'])} classes.</p>"]
    rows = "\n".join(
        f'<tr id="metric-{key}"><td>{name}</td>{_cell(float(report[key]))}</tr>'
        for key, name in METRICS.items()
        if key in report
    )
    lines.append(
        f'<table id="metrics"><thead><tr><th>metric</th><th>value</th></tr></thead><tbody>{rows}</tbody></table>'
    )
    for key in ("checkpoint", "adapted_from", "model", "validation"):
        if report.get(key):
            lines.append(f"<p>{escape(key.replace('_', ' '))}: <code>{escape(str(report[key]))}</code></p>")
    return _section("Metrics", "\n".join(lines))


def _confusions(report: dict[str, Any]) -> str:
    matrix = report["confusion_matrix"]
    names = report["class_names"]
    counts = _table(["true \\ predicted", *names], [[n, *row] for n, row in zip(names, matrix, strict=True)],
                    "confusion-counts", sortable=False)  # fmt: skip
    top = report.get("top_confusions") or []
    rows = [[c["true"], c["predicted"], c["count"], float(c["rate"])] for c in top]
    frequent = _table(["true", "predicted", "count", "rate"], rows, "top-confusions")
    return (("<h3>Most frequent confusions</h3>" + frequent) if top else "") + (
        f"<details><summary>Counts</summary>{counts}</details>"
    )


def _per_class(report: dict[str, Any]) -> str:
    per_class = report["per_class"]
    rows = [
        [name, float(per_class[name]["recall"]), float(per_class[name]["precision"]),
         float(per_class[name]["f1-score"]), int(per_class[name]["support"])]
        for name in report["class_names"]
    ]  # fmt: skip
    return _table(["class", "accuracy (recall)", "precision", "F1", "examples"], rows, "per-class")


def _per_speaker(report: dict[str, Any]) -> str:
    examples = report.get("per_speaker_examples", {})
    rows = [[s, examples.get(s), float(a)] for s, a in report["per_speaker_accuracy"].items()]
    return _table(["speaker", "examples", "accuracy"], rows, "per-speaker")


def _clip_list(wrong: Sequence[Clip], total: int, sources: AudioSources | None) -> str:
    if not wrong:
        return f"<p>None of the {total} clips is misclassified.</p>"

    def options(name: str, values: set[str]) -> str:
        choices = "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in sorted(values))
        select = f'<select id="filter-{name.split()[0]}"><option value="">all</option>{choices}</select>'
        return f"<label>{name} {select}</label>"

    speakers = {speaker_group(c.speaker) for c in wrong}
    filters = (
        '<div class="filters">'
        + options("true class", {c.true_label for c in wrong})
        + options("predicted class", {c.predicted_label for c in wrong})
        + (options("speaker", speakers) if speakers != {""} else "")
        + '<label>text <input id="filter-text" type="search" placeholder="path, label or speaker"></label>'
        + f'<span><span id="shown">{len(wrong)}</span> of {len(wrong)} shown '
        + f"({len(wrong)} of {total} clips misclassified; most confident first)</span></div>"
    )
    headers = ["clip", "true", "predicted", "P(predicted)", "P(true)", "top probabilities", "speaker", "path"]
    rows = []
    for clip in wrong:
        source = sources(clip.path) if sources is not None else None
        player = (f'<audio controls preload="none" src="{escape(source)}"></audio>' if source
                  else '<span class="missing">no audio file</span>')  # fmt: skip
        top = " · ".join(f"{escape(label)} {p:.3f}" for label, p in clip.top)
        group = speaker_group(clip.speaker)
        rows.append(
            f'<tr data-true="{escape(clip.true_label)}" data-predicted="{escape(clip.predicted_label)}" '
            f'data-speaker="{escape(group)}"><td>{player}</td>{_cell(clip.true_label)}{_cell(clip.predicted_label)}'
            f"{_cell(clip.probability, 3)}{_cell(clip.true_probability, 3)}<td>{top}</td>{_cell(group)}"
            f'<td class="path">{escape(clip.path)}</td></tr>'
        )
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "\n".join(rows)
    return (
        f'{filters}<table id="clips" class="sortable"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'
    )


def _streams(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    """The stream evaluation's section of ``report.md``, as HTML (raw HTML in it is escaped), and its DET curve."""
    from markdown_it import MarkdownIt

    from speechrnn.evaluate import stream_markdown

    markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
    body = markdown.render(stream_markdown(report["streams"], report.get("accuracy")))
    return _section("Keyword spotting in streams", body.split("</h2>", 1)[1] + _plot(plots, "det_curve.png"), "streams")


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}thead th{background:#f4f4f4}
table.sortable th{cursor:pointer;user-select:none}th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}td.path{font-family:monospace;font-size:12px;word-break:break-all}
figure{margin:.6em 0}img{max-width:min(100%,900px)}.filters{display:flex;flex-wrap:wrap;gap:1em;align-items:center}
.missing{color:#999}audio{height:2em;width:16em}code{font-size:12px}
"""

SCRIPT = """
"use strict";
function cellKey(row, column) {
  const cell = row.cells[column];
  if (!cell) return "";
  const value = cell.dataset.sort;
  return value === undefined ? cell.textContent.trim().toLowerCase() : parseFloat(value);
}
document.querySelectorAll("table.sortable").forEach(function (table) {
  const headers = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(headers, function (header, column) {
    header.addEventListener("click", function () {
      const ascending = header.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const body = table.tBodies[0];
      const rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        const x = cellKey(a, column), y = cellKey(b, column);
        const order = x < y ? -1 : x > y ? 1 : 0;
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
const clips = document.getElementById("clips");
if (clips) {
  const controls = ["true", "predicted", "speaker"].map(function (name) {
    return [name, document.getElementById("filter-" + name)];
  }).filter(function (pair) { return pair[1]; });
  const text = document.getElementById("filter-text");
  const filter = function () {
    const needle = text.value.trim().toLowerCase();
    let shown = 0;
    Array.prototype.forEach.call(clips.tBodies[0].rows, function (row) {
      const visible = controls.every(function (pair) {
        return !pair[1].value || row.dataset[pair[0]] === pair[1].value;
      }) && (!needle || row.textContent.toLowerCase().indexOf(needle) >= 0);
      row.hidden = !visible;
      shown += visible ? 1 : 0;
    });
    document.getElementById("shown").textContent = String(shown);
  };
  controls.forEach(function (pair) { pair[1].addEventListener("change", filter); });
  text.addEventListener("input", filter);
}
"""
