"""Received in-order data waiting for the application.

The segments are kept as they came (views of the packets read: no copy) and joined once, when
the application reads. A bytearray that grew by every segment and was copied out and freed at
every read cost a bulk receiver more than half its time: each growth of a large bytearray may
reallocate and fault in fresh pages.
"""

from __future__ import annotations

from collections import deque

# Smaller pieces are copied into a shared tail (a view would keep a whole packet alive per byte
# of a tiny segment: a peer sending 1-byte segments must not cost a packet each).
_COPY_BELOW = 1024
_TAIL_MAX = 65536


class RecvQueue:
    __slots__ = ("_chunks", "_size")

    def __init__(self) -> None:
        # Made at the first data and dropped when all is read: an empty deque costs ~600
        # bytes, and most of a server's connections sit idle with nothing queued.
        self._chunks: deque | None = None
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def append(self, data) -> None:
        n = len(data)
        if not n:
            return
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = deque()
        self._size += n
        if n >= _COPY_BELOW and type(data) is memoryview and type(data.obj) is bytes:
            chunks.append(data)  # a view of an immutable packet: safe to keep as it is
            return
        if chunks and type(chunks[-1]) is bytearray and len(chunks[-1]) + n <= _TAIL_MAX:
            chunks[-1] += data
        else:
            chunks.append(bytearray(data))

    def take_chunks(self) -> list:
        """All of it, as the pieces it is kept in (views and bytearrays: bytes-like, no join).

        The caller owns them: none stays in the queue."""
        chunks = self._chunks
        if chunks is None:
            return []
        self._chunks = None
        self._size = 0
        return list(chunks)

    def take(self, max_bytes: int = -1) -> bytes:
        """Up to `max_bytes` (all, if negative) from the front, as one bytes object."""
        chunks = self._chunks
        if max_bytes < 0 or max_bytes >= self._size:
            if chunks is None:
                return b""
            data = b"".join(chunks)
            self._chunks = None
            self._size = 0
            return data
        out = []
        need = max_bytes
        while need:
            chunk = chunks[0]
            if len(chunk) <= need:
                out.append(chunks.popleft())
                need -= len(chunk)
            else:
                view = memoryview(chunk)
                out.append(view[:need])
                chunks[0] = view[need:] if type(chunk) is not bytearray else chunk[need:]
                need = 0
        self._size -= max_bytes
        return b"".join(out)
