"""`usertcp connect`: stdin to a connection and the connection to stdout, like `nc -N`."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

_CHUNK = 64 * 1024


def _read_in_daemon_thread(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.Future:
    """os.read(fd) in a daemon thread: works for every kind of stdin (file, pipe, terminal).

    Not the loop's default executor: asyncio.run joins its threads, so a read blocked on a
    terminal or an open pipe would keep the command from exiting after a reset.
    """
    fut = loop.create_future()

    def settle(data, exc) -> None:
        if fut.done():
            return
        if exc is None:
            fut.set_result(data)
        else:
            fut.set_exception(exc)

    def work() -> None:
        try:
            data, exc = os.read(fd, _CHUNK), None
        except OSError as e:
            data, exc = None, e
        try:
            loop.call_soon_threadsafe(settle, data, exc)
        except RuntimeError:  # the loop has closed meanwhile: nobody wants the data
            pass

    threading.Thread(target=work, name="usertcp-stdin", daemon=True).start()
    return fut


async def _stdin_to(writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    while True:
        data = await _read_in_daemon_thread(loop, fd)
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
    # A reset fails both directions; the reader's error is the one reported.
    sending.add_done_callback(lambda task: task.cancelled() or task.exception())
    try:
        await _to_stdout(reader)
        await sending
    finally:
        sending.cancel()  # after a reset: stop waiting for stdin
    writer.close()
    await writer.wait_closed()
    return 0
