"""Out-of-order segments held until the gap before them is filled."""

from __future__ import annotations

from .seq import MASK


class Reassembly:
    """Non-overlapping (seq, bytes) blocks, kept sorted by distance from RCV.NXT.

    The caller bounds what it offers here by the receive window, so the held
    bytes never exceed the window the peer was given.
    """

    __slots__ = ("blocks", "size")

    def __init__(self) -> None:
        # A list only once a block is held (add makes one): most connections never need it.
        self.blocks: list[tuple[int, bytes]] | tuple = ()
        self.size = 0

    def __bool__(self) -> bool:
        return bool(self.blocks)

    def add(self, seq: int, data: bytes, rcv_nxt: int) -> None:
        start = (seq - rcv_nxt) & MASK
        kept: list[tuple[int, bytes]] = []
        new_parts = [(start, data)]
        for bseq, bdata in self.blocks:
            bstart = (bseq - rcv_nxt) & MASK
            bend = bstart + len(bdata)
            kept.append((bstart, bdata))
            # Cut what the held block already covers out of the new data.
            trimmed = []
            for pstart, pdata in new_parts:
                pend = pstart + len(pdata)
                if pend <= bstart or pstart >= bend:
                    trimmed.append((pstart, pdata))
                    continue
                if pstart < bstart:
                    trimmed.append((pstart, pdata[: bstart - pstart]))
                if pend > bend:
                    trimmed.append((bend, pdata[bend - pstart:]))
            new_parts = trimmed
            if not new_parts:
                return
        for pstart, pdata in new_parts:
            kept.append((pstart, pdata))
            self.size += len(pdata)
        kept.sort(key=lambda b: b[0])
        self.blocks = [((s + rcv_nxt) & MASK, d) for s, d in kept]

    def covers(self, seq: int, length: int, rcv_nxt: int) -> bool:
        """Is [seq, seq + length) held already, all of it (a duplicate)?"""
        start = (seq - rcv_nxt) & MASK
        end = start + length
        for bseq, bdata in self.blocks:
            bstart = (bseq - rcv_nxt) & MASK
            if bstart <= start and end <= bstart + len(bdata):
                return True
        return False

    def pop_ready(self, rcv_nxt: int) -> list[bytes]:
        """Remove and return the blocks that now continue at RCV.NXT, in order.

        Bytes before RCV.NXT (already received) are trimmed away.
        """
        out = []
        blocks = self.blocks
        while blocks:
            bseq, bdata = blocks[0]
            offset = (rcv_nxt - bseq) & MASK
            if offset >= (1 << 31):  # block starts beyond RCV.NXT: still a gap
                break
            blocks.pop(0)
            self.size -= len(bdata)
            if offset < len(bdata):
                piece = bdata[offset:]
                out.append(piece)
                rcv_nxt = (rcv_nxt + len(piece)) & MASK
        if not blocks:
            self.blocks = ()
        return out

    def ranges(self) -> list[tuple[int, int]]:
        """Held blocks as (left, right) sequence edges, merged where adjacent."""
        merged: list[list[int]] = []
        for bseq, bdata in self.blocks:
            right = (bseq + len(bdata)) & MASK
            if merged and merged[-1][1] == bseq:
                merged[-1][1] = right
            else:
                merged.append([bseq, right])
        return [(a, b) for a, b in merged]
