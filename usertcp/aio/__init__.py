"""The asyncio driver and the streams API."""

from .driver import Stack
from .server import Server
from .transport import TcpTransport

__all__ = ["Server", "Stack", "TcpTransport"]
