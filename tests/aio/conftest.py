"""Two asyncio stacks joined by an in-memory datagram link (no network at all)."""

import pytest

from usertcp import Stack, TcpConfig
from usertcp.phy import MemoryDevice


@pytest.fixture
async def pair():
    dev_a, dev_b = MemoryDevice.pair()
    a = Stack(dev_a, "10.0.0.1", config=TcpConfig(isn_secret=b"a"))
    b = Stack(dev_b, "10.0.0.2", config=TcpConfig(isn_secret=b"b"))
    yield a, b
    await a.aclose(timeout=0.5)
    await b.aclose(timeout=0.5)
