"""usertcp: a userspace TCP/IPv4 stack for asyncio behind a Linux TUN device."""

from .aio import Server, Stack, TcpTransport
from .phy.errors import DeviceError
from .tcp import State, TcpConfig

__version__ = "0.1.0"
__all__ = ["DeviceError", "Server", "Stack", "State", "TcpConfig", "TcpTransport", "__version__"]
