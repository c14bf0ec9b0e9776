"""Seeing TCP conversations: captures and live packets drawn as ladders and graphs.

- `model`: what every part shares (a captured packet, a ladder row, a conversation);
- `capture`, `conversations`, `filter`: pcap/pcapng files in, connections out, tcpdump-like filters;
- `observer`: both sides' RFC 9293 states inferred from what each side sent, anomalies marked;
- `text`, `svg`, `html`, `mermaid`: the ladder drawn; `plot` (with `raster`): time-sequence graphs;
- `recorder`, `trace`, `kernel`: live packets from a device, `--trace`, the kernel's own states;
- `commands`: `usertcp ladder` and `usertcp plot`.
"""

from .kernel import KERNEL_STATES, kernel_tcp_state
from .model import Conversation, Packet, Row
from .observer import LiveObserver, observe
from .recorder import PacketRecorder, to_packet
from .text import (
                   Style,
                   TextLadder,
                   flag_words,
                   fmt_duration,
                   payload_text,
                   render_text,
                   stream_takes_unicode,
)

__all__ = [
    "KERNEL_STATES",
    "Conversation",
    "LiveObserver",
    "Packet",
    "PacketRecorder",
    "Row",
    "Style",
    "TextLadder",
    "flag_words",
    "fmt_duration",
    "kernel_tcp_state",
    "observe",
    "payload_text",
    "render_text",
    "stream_takes_unicode",
    "to_packet",
]
