"""`usertcp connect`: stdin to a connection and the connection to stdout, like `nc -N`."""

from __future__ import annotations

import asyncio
import os
import sys

_CHUNK = 64 * 1024


async def _stdin_to(writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    while True:
        # A thread read works for every kind of stdin (file, pipe, terminal).
        data = await loop.run_in_executor(None, os.read, fd, _CHUNK)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    writer.write_eof()  # half-close: the peer sees EOF, we keep reading


async def _to_stdout(reader: asyncio.StreamReader) -> None:
    out = sys.stdout.buffer
    while data := await reader.read(_CHUNK):
        out.write(data)
        out.flush()


async def run_connect(stack, host: str, port: int) -> int:
    """Return the exit status: 0 once both directions closed with FINs."""
    reader, writer = await stack.open_connection(host, port)
    sending = asyncio.create_task(_stdin_to(writer))
    await _to_stdout(reader)
    await sending
    writer.close()
    await writer.wait_closed()
    return 0
