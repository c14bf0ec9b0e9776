"""A listening port with the methods of `asyncio.Server`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .driver import Stack
    from .transport import TcpTransport


class Server:
    """A server on one port of the stack's address, or (port None) on every address and port
    routed to the stack; `admit`, for the latter, is asked before each SYN is answered."""

    def __init__(self, stack: Stack, port: int | None, protocol_factory, backlog: int | None,
                 admit=None):
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port {port} out of range 1..65535")
        if admit is not None and port is not None:
            raise ValueError("admit= is for a server on every address (port=None)")
        self._stack = stack
        self.port = port
        self.protocol_factory = protocol_factory
        self.backlog = backlog
        self.admit = admit
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
        return ("0.0.0.0", 0) if self.port is None else (self._stack.address, self.port)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._stack.loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if not self._serving:
            self._stack.register_server(self)
            self._serving = True

    async def serve_forever(self) -> None:
        if self._serving_forever is not None:
            raise RuntimeError(f"{self!r} is already being awaited on serve_forever()")
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
        where = "every address" if self.port is None else f"{self._stack.address}:{self.port}"
        return f"<usertcp.Server {where} serving={self._serving}>"
