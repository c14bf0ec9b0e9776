"""Small stream services: each is a `start_server` callback."""

from __future__ import annotations

import asyncio

_CHUNK = 256 * 1024


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send back everything until the peer's EOF, then close."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()
    except (ConnectionError, TimeoutError):
        writer.transport.abort()


async def discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read and drop everything until the peer's EOF, then close (RFC 863)."""
    try:
        while await reader.read(_CHUNK):
            pass
        writer.close()
        await writer.wait_closed()
    except (ConnectionError, TimeoutError):
        writer.transport.abort()
