"""Keepalive and the user timeout between two real stacks over the virtual link.

A live peer answers every probe (our engine answers an out-of-window ACK with
its ACK), so an idle connection lives on; a peer that vanishes is detected
within idle + probes * interval (or the user timeout).
"""

from __future__ import annotations

from usertcp.stack import Stack
from usertcp.tcp import events as ev
from usertcp.tcp.config import TcpConfig
from usertcp.tcp.state import State

from .link import Faults, Link

A, B = "10.0.0.1", "10.0.0.2"
GONE = Faults(loss=1.0)


def idle_pair(config_a: TcpConfig, config_b: TcpConfig | None = None):
    link = Link(Stack(A, config=config_a), Stack(B, config=config_b or TcpConfig()), seed=3)
    link.b.listen(80)
    link.app_b.accept_with(lambda cid, remote: {"shutdown_when_done": False})
    client = link.app_a.open(B, 80, link.now, shutdown_when_done=False)
    assert link.run_until(lambda: client.state() is State.ESTABLISHED
                          and link.app_b.all_streams, max_time=5)
    return link, client, link.app_b.all_streams[0]


def test_live_peer_answers_probes_for_ever():
    cfg = TcpConfig(keepalive=True, keepalive_idle=10.0, keepalive_interval=2.0,
                    keepalive_probes=3)
    link, client, server = idle_pair(cfg)
    link.advance(1000.0)
    assert client.state() is State.ESTABLISHED and server.state() is State.ESTABLISHED
    probes = link.a.counters["keepalive_probes"]
    assert 90 <= probes <= 100  # one per idle period: every probe was answered at once
    assert "keepalive_timeouts" not in link.a.counters
    assert client.end is None and server.end is None


def test_vanished_peer_is_detected_by_keepalive():
    cfg = TcpConfig(keepalive=True, keepalive_idle=10.0, keepalive_interval=2.0,
                    keepalive_probes=3)
    link, client, server = idle_pair(cfg)
    start = link.now
    link.faults = (GONE, GONE)  # the peer and the path vanish without a word
    assert link.run_until(lambda: client.end is not None, max_time=60)
    assert type(client.end) is ev.ConnectionTimedOut
    assert link.now - start <= 10.0 + 3 * 2.0 + 0.1
    assert link.a.counters["keepalive_timeouts"] == 1
    assert link.a.connection_count() == 0
    assert server.state() is State.ESTABLISHED  # it never heard a thing (keepalive off)


def test_vanished_peer_is_detected_by_the_user_timeout_while_sending():
    link, client, _server = idle_pair(TcpConfig(user_timeout=5.0))
    link.faults = (GONE, GONE)
    start = link.now
    client.source = memoryview(b"x" * 100_000)  # the application writes into the void
    assert link.run_until(lambda: client.end is not None, max_time=600)
    assert type(client.end) is ev.ConnectionTimedOut
    assert 5.0 <= link.now - start <= 5.1  # not the ~15 minutes of 15 retries
    assert link.a.counters["user_timeouts"] == 1
