"""The ladder as a Mermaid `sequenceDiagram`, for Markdown.

    sequenceDiagram
        participant A as client 10.0.0.1:40000
        participant B as server 10.0.0.2:80
        Note over A: CLOSED
        Note over B: LISTEN
        A->>B: SYN seq=0
        Note over A: SYN-SENT

One message line per packet (`A-xB:` for one that never arrived); state changes are notes.
Characters that would end or redirect a Mermaid line (`;`, `#`, `%`, `<`, `>`, `&`) become
Mermaid's entity codes (`#59;`), and line breaks become spaces.
"""

from __future__ import annotations

from .model import LEFT, LOST, RIGHT, Conversation, Row
from .svg import label

IDS = ("A", "B")  # participant ids: plain letters, whatever the endpoints are called

_ENTITIES = {ch: f"#{ord(ch)};" for ch in ";#%<>&"}


def mermaid_text(text: str) -> str:
    """One line of text safe after `:` or `as` in a Mermaid sequence diagram."""
    text = " ".join(text.split())  # newlines and other breaks: one line
    return "".join(_ENTITIES.get(ch, ch) for ch in text if ch.isprintable())


def message(conv: Conversation, row: Row) -> str:
    """'A->>B: SYN seq=0', 'B-xA: FIN-ACK seq=16 ack=16 [lost]'."""
    src, dst = IDS[row.sender], IDS[1 - row.sender]
    arrow = "-x" if not row.delivered or LOST in row.marks else "->>"
    return f"{src}{arrow}{dst}: {mermaid_text(label(row, conv.isn))}"


def to_mermaid(conv: Conversation) -> str:
    """The conversation as Mermaid source, starting with `sequenceDiagram`."""
    lines = ["sequenceDiagram"]
    for side in (LEFT, RIGHT):
        lines.append(f"    participant {IDS[side]} as {mermaid_text(conv.label(side))}")
    for side in (LEFT, RIGHT):
        lines.append(f"    Note over {IDS[side]}: {mermaid_text(conv.initial[side])}")
    shown = list(conv.initial)
    for row in conv.rows:
        lines.append("    " + message(conv, row))
        for side in (row.sender, 1 - row.sender):  # the sender's change first, as it happens
            if row.states[side] != shown[side]:
                shown[side] = row.states[side]
                lines.append(f"    Note over {IDS[side]}: {mermaid_text(shown[side])}")
    return "\n".join(lines) + "\n"
