"""Stack.add_state_listener: every StateChanged event, in order, before the packets it causes."""

import asyncio

from usertcp import Stack, TcpConfig
from usertcp.phy import MemoryDevice
from usertcp.phy.base import Middleware
from usertcp.tcp.events import StateChanged
from usertcp.wire.packet import parse_packet
from usertcp.wire.tcp import ACK, FIN, SYN


class SendSpy(Middleware):
    """Notes, for each packet sent, how many state events the listener had seen by then."""

    def __init__(self, inner, seen: list) -> None:
        self.inner = inner
        self.seen = seen
        self.sent: list[tuple[int, int]] = []  # (flags, events seen before it went out)

    def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        return self.inner.receive_batch(max_packets)

    def send_batch(self, packets: list[bytes]) -> None:
        for packet in packets:
            self.sent.append((parse_packet(packet, verify_checksum=False).flags, len(self.seen)))
        self.inner.send_batch(packets)

    def next_deadline(self) -> float | None:
        return self.inner.next_deadline()

    def close(self) -> None:
        self.inner.close()


async def until(predicate, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def run_one_connection(client_closes: bool):
    """A client on stack A (spied on) talks to an echo on B; returns (events, spy)."""
    events: list[StateChanged] = []
    dev_a, dev_b = MemoryDevice.pair()
    spy = SendSpy(dev_a, events)
    a = Stack(spy, "10.0.0.1", config=TcpConfig(isn_secret=b"a", msl=0.05))
    b = Stack(dev_b, "10.0.0.2", config=TcpConfig(isn_secret=b"b", msl=0.05))
    a.add_state_listener(events.append)

    async def serve(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        if client_closes:
            await reader.read()  # until the client's FIN
        writer.close()

    try:
        await b.start_server(serve, 7)
        reader, writer = await a.open_connection("10.0.0.2", 7)
        writer.write(b"hi\n")
        assert await reader.readline() == b"hi\n"
        if client_closes:
            writer.close()
            await until(lambda: any(e.new.name == "TIME_WAIT" for e in events))
        else:
            assert await reader.read() == b""
            writer.close()
        await until(lambda: events and str(events[-1].new) == "CLOSED")
    finally:
        await a.aclose(timeout=0.5)
        await b.aclose(timeout=0.5)
    return events, spy


def path(events: list[StateChanged]) -> list[str]:
    return [str(events[0].old)] + [str(e.new) for e in events]


async def test_active_close_events_in_order_with_endpoints():
    events, _ = await run_one_connection(client_closes=True)
    assert path(events) == ["CLOSED", "SYN-SENT", "ESTABLISHED", "FIN-WAIT-1", "FIN-WAIT-2",
                            "TIME-WAIT", "CLOSED"]
    assert all(isinstance(e, StateChanged) for e in events)
    assert len({e.conn_id for e in events}) == 1
    assert {e.remote for e in events} == {("10.0.0.2", 7)}
    assert {e.local[0] for e in events} == {"10.0.0.1"}
    times = [e.time for e in events]
    assert times == sorted(times)
    # TIME-WAIT lasts 2 * MSL = 0.1 s by the engine's own clock.
    assert 0.1 <= events[-1].time - events[-2].time < 0.3
    assert all(e.cause for e in events)


async def test_passive_close_path():
    events, _ = await run_one_connection(client_closes=False)
    assert path(events) == ["CLOSED", "SYN-SENT", "ESTABLISHED", "CLOSE-WAIT", "LAST-ACK",
                            "CLOSED"]


async def test_called_before_the_packets_that_result_are_sent():
    events, spy = await run_one_connection(client_closes=True)
    states = path(events)

    def seen_before(flags_wanted: int, flags_unwanted: int = 0) -> int:
        return next(n for flags, n in spy.sent
                    if flags & flags_wanted == flags_wanted and not flags & flags_unwanted)

    # The SYN goes out after CLOSED -> SYN-SENT was reported, the FIN after
    # ESTABLISHED -> FIN-WAIT-1, the ACK of the SYN-ACK after SYN-SENT -> ESTABLISHED.
    assert states[seen_before(SYN)] == "SYN-SENT"
    assert states[seen_before(ACK, SYN | FIN)] == "ESTABLISHED"
    assert states[seen_before(FIN)] == "FIN-WAIT-1"
    # The last packet (the ACK of the peer's FIN) after FIN-WAIT-2 -> TIME-WAIT.
    assert states[spy.sent[-1][1]] == "TIME-WAIT"


async def test_remove_and_a_failing_listener(pair):
    a, b = pair
    got: list[str] = []
    removed: list[str] = []

    def broken(event):
        raise RuntimeError("listener bug")

    a.add_state_listener(broken)
    a.add_state_listener(lambda e: got.append(str(e.new)))
    a.add_state_listener(removed.append)
    a.remove_state_listener(removed.append)
    a.remove_state_listener(print)  # never added: ignored
    await b.start_server(lambda r, w: w.close(), 9)
    _, writer = await a.open_connection("10.0.0.2", 9)
    await until(lambda: "CLOSE-WAIT" in got)
    writer.close()
    await until(lambda: got[-1] == "CLOSED")
    # The broken listener raised on every event; the next one still saw them all.
    assert got == ["SYN-SENT", "ESTABLISHED", "CLOSE-WAIT", "LAST-ACK", "CLOSED"]
    assert removed == []


async def test_recorder_sees_both_directions_and_the_state_before_each_packet():
    """The demo's and the tracer's set-up: a PacketRecorder around the device plus a listener."""
    from usertcp.ladder.recorder import PacketRecorder

    dev_a, dev_b = MemoryDevice.pair()
    state = {"now": "CLOSED"}
    seen: list[tuple[bool, int, int, str]] = []  # (outbound, sport, flags, listener's state)

    def on_packet(packet, outbound):
        seen.append((outbound, packet.sport, packet.flags, state["now"]))

    recorder = PacketRecorder(dev_a, on_packet=on_packet, one_at_a_time=True,
                              match=lambda src, sport, dst, dport: 7 in (sport, dport))
    a = Stack(recorder, "10.0.0.1", config=TcpConfig(isn_secret=b"a", msl=0.05))
    b = Stack(dev_b, "10.0.0.2", config=TcpConfig(isn_secret=b"b", msl=0.05))
    recorder.clock = a.loop.time
    a.add_state_listener(lambda e: state.update(now=str(e.new)))
    try:
        await b.start_server(lambda r, w: w.close(), 7)
        await b.start_server(lambda r, w: w.close(), 8)
        _, other = await a.open_connection("10.0.0.2", 8)  # not matched: passes unreported
        other.close()
        _, writer = await a.open_connection("10.0.0.2", 7)
        await until(lambda: state["now"] == "CLOSE-WAIT")
        writer.close()
        await until(lambda: state["now"] == "CLOSED")
    finally:
        await a.aclose(timeout=0.5)
        await b.aclose(timeout=0.5)
    assert recorder.other_packets > 0
    assert recorder.recorded == len(seen)
    syn, syn_ack, ack = seen[:3]
    assert syn[:3] == (True, syn[1], SYN) and syn[1] != 7 and syn[3] == "SYN-SENT"
    assert syn_ack[:3] == (False, 7, SYN | ACK)
    assert ack[0] and ack[2] == ACK and ack[3] == "ESTABLISHED"
    # Our FIN went out after CLOSE-WAIT -> LAST-ACK had been reported.
    fins = [s for s in seen if s[0] and s[2] & FIN]
    assert len(fins) == 1 and fins[0][3] == "LAST-ACK"
    assert {s[1] for s in seen if not s[0]} == {7}
