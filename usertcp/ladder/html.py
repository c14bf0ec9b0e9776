"""The ladder as one self-contained HTML5 page: the SVG inline and a table of the rows.

Nothing is fetched from anywhere (no CDN, fonts, scripts or links) and nothing needs
JavaScript; every piece of text is escaped.
"""

from __future__ import annotations

from .model import LEFT, LOST, RESET, RETRANSMISSION, RIGHT, Conversation, Row
from .svg import absolute, to_svg, xml_text
from .text import flag_words, numbers, ordered_marks, payload_text, window_text

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #1b1b1b; background: #ffffff; }
h1 { font-size: 1.3em; }
figure { margin: 1em 0; overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #cfd8dc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #eceff1; }
td.num { text-align: right; font-family: monospace; }
td.mono { font-family: monospace; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
tr.retransmission td { background: #fff3e0; }
tr.lost td, tr.reset td { background: #ffebee; }
"""

PREVIEW = 64  # payload bytes shown in the table
COLUMNS = ("no.", "time (ms)", "direction", "flags", "seq", "ack", "absolute", "len",
           "window", "options", "{left} state", "{right} state", "marks", "why", "payload")


def _cell(text: object, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{xml_text(str(text))}</td>"


def _row(conv: Conversation, row: Row) -> str:
    p = row.packet
    left, right = conv.names
    rel_seq, rel_ack = numbers(row, conv.isn)
    marks = ordered_marks(row.marks)
    classes = " ".join(m for m in (RETRANSMISSION, LOST, RESET) if m in marks)
    if not row.delivered and LOST not in marks:
        classes = (classes + " lost").strip()
    preview = payload_text(p.payload, PREVIEW) if p.payload else ""
    cells = [
        _cell(row.index, "num"),
        _cell(f"{row.time * 1000:.1f}", "num"),
        _cell(f"{left} {'→' if row.sender == LEFT else '←'} {right}", "nowrap"),
        _cell(flag_words(p.flags), "mono"),
        _cell("" if rel_seq is None else rel_seq, "num"),
        _cell("" if rel_ack is None else rel_ack, "num"),
        _cell(absolute(row), "mono"),
        _cell(p.length, "num"),
        _cell(window_text(row), "mono"),
        _cell(" · ".join(row.options), "nowrap"),
        _cell(row.states[LEFT], "mono"),
        _cell(row.states[RIGHT], "mono"),
        _cell(", ".join(marks) + ("" if row.delivered or LOST in marks else " (not delivered)")),
        _cell(row.why),
        _cell(preview, "mono"),
    ]
    attr = f' class="{classes}"' if classes else ""
    return f'<tr{attr} id="row-{row.index}">' + "".join(cells) + "</tr>"


def to_html(conv: Conversation, title: str | None = None) -> str:
    """A self-contained HTML5 page of the conversation."""
    title = title or f"TCP ladder: {conv.label(LEFT)} ⇄ {conv.label(RIGHT)}"
    left, right = conv.names
    isn = ", ".join(f"{'xy'[side]} = {conv.isn[side]}" for side in (LEFT, RIGHT)
                    if conv.isn[side] is not None)
    summary = (f"{len(conv.rows)} packets between {conv.label(LEFT)} (left, opened the "
               f"connection) and {conv.label(RIGHT)}.")
    if isn:
        summary += f" Initial sequence numbers: {isn}; seq and ack are relative to them."
    if not conv.complete:
        summary += " The capture began after the handshake: numbers are absolute where unknown."
    head = "".join(f"<th>{xml_text(c.format(left=left, right=right))}</th>" for c in COLUMNS)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{xml_text(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{xml_text(title)}</h1>",
        f"<p>{xml_text(summary)}</p>",
        "<figure>",
        to_svg(conv).rstrip("\n"),
        "</figure>",
        "<table>",
        f"<thead><tr>{head}</tr></thead>",
        "<tbody>",
        *(_row(conv, row) for row in conv.rows),
        "</tbody>",
        "</table>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


__all__ = ["to_html"]
