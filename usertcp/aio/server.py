"""A listening port with the methods of `asyncio.Server`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .driver import Stack
    from .transport import TcpTransport


class Server:
    def __init__(self, stack: Stack, port: int, protocol_factory, backlog: int | None):
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range 1..65535")
        self._stack = stack
        self.port = port
        self.protocol_factory = protocol_factory
        self.backlog = backlog
        self._serving = False
        self._closed = False
        self._serving_forever: asyncio.Future | None = None
        self._clients: set[TcpTransport] = set()
        self._closed_event = asyncio.Event()

    @property
    def sockets(self) -> tuple:
        return ()  # there is no kernel socket behind a usertcp server

    @property
    def sockname(self) -> tuple[str, int]:
        return (self._stack.address, self.port)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._stack.loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._closed:
            raise RuntimeError(f"server on port {self.port} is closed")
        if not self._serving:
            self._stack.register_server(self)
            self._serving = True

    async def serve_forever(self) -> None:
        if self._serving_forever is not None:
            raise RuntimeError(f"server on port {self.port} is already being awaited on "
                               "serve_forever()")
        await self.start_serving()
        self._serving_forever = self._stack.loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise
        finally:
            self._serving_forever = None

    def close(self) -> None:
        """Stop accepting; connections already accepted go on."""
        if self._closed:
            return
        self._closed = True
        self._serving = False
        self._stack.unregister_server(self)
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()
        self._closed_event.set()

    def close_clients(self) -> None:
        for transport in list(self._clients):
            transport.close()

    def abort_clients(self) -> None:
        for transport in list(self._clients):
            transport.abort()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    def attach(self, transport: TcpTransport) -> None:
        self._clients.add(transport)

    def detach(self, transport: TcpTransport) -> None:
        self._clients.discard(transport)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        return f"<usertcp.Server {self._stack.address}:{self.port} serving={self._serving}>"
