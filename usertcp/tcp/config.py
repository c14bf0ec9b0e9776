"""Tunables of the engine. Defaults follow Linux where the RFCs leave a choice."""

from __future__ import annotations

from dataclasses import dataclass

from .congestion import ALGORITHMS


@dataclass
class TcpConfig:
    mss: int = 1460  # what we advertise; the driver clamps it to MTU - 40
    msl: float = 30.0  # TIME-WAIT lasts 2 * msl
    send_buffer: int = 256 * 1024
    receive_buffer: int = 256 * 1024
    initial_window: int = 10  # segments (RFC 6928)
    rto_initial: float = 1.0  # RFC 6298
    rto_min: float = 0.2  # Linux TCP_RTO_MIN
    rto_max: float = 120.0
    syn_retries: int = 6  # SYN-SENT gives up after these (1, 3, 7, ... 127 s)
    synack_retries: int = 5
    retries: int = 15  # data retransmissions before ConnectionTimedOut
    backlog: int = 128  # accept queue per listener, by default
    syn_backlog: int = 256  # SYN-RECEIVED entries per listener
    delayed_ack: bool = True
    delayed_ack_timeout: float = 0.04  # at most 0.2 (RFC 1122); Linux's minimum is 40 ms
    nagle: bool = True
    window_scale: bool = True  # offer RFC 7323 window scaling
    sack: bool = True  # offer RFC 2018 SACK; with it, RFC 6675 loss recovery
    timestamps: bool = True  # offer RFC 7323 timestamps: RTTM and PAWS
    # Congestion control, as Linux's net.ipv4.tcp_congestion_control: "cubic" (RFC 9438,
    # with HyStart++) or "newreno" (RFC 5681); per connection with Stack.set_congestion.
    congestion: str = "cubic"
    frto: bool = True  # RFC 5682 spurious timeout detection (with SACK), Linux's tcp_frto
    fin_wait_2_timeout: float = 60.0  # for connections the application has closed
    challenge_ack_limit: int = 1000  # per second, stack-wide (RFC 5961 7)
    ephemeral_ports: tuple[int, int] = (32768, 60999)
    # Active opens use only ports p with p % stride == offset: with N workers on one
    # multi-queue TUN, worker i takes (N, i), and the kernel steers replies by that.
    port_stride: tuple[int, int] = (1, 0)
    isn_secret: bytes = b""  # the driver supplies random bytes; empty is for tests
    tx_checksum_offload: bool = False  # leave the TCP checksum to the device
    tso_max: int = 0  # largest segment payload the device will cut up for us; 0: MSS only
    ttl: int = 64
    # Keepalive (RFC 1122 4.2.3.6), off by default as the RFC asks; the numbers are
    # Linux's: after `keepalive_idle` seconds without a segment from the peer, and with
    # no data outstanding, a probe every `keepalive_interval` s; when `keepalive_probes`
    # of them go unanswered the connection is reset and reported as ConnectionTimedOut.
    # Stack.set_keepalive turns it on or off per connection.
    keepalive: bool = False
    keepalive_idle: float = 7200.0
    keepalive_interval: float = 75.0
    keepalive_probes: int = 9
    # TCP_USER_TIMEOUT (RFC 5482, Linux semantics): data unacknowledged, a zero window
    # not reopened or keepalive probes unanswered for this long end the connection
    # (ConnectionTimedOut) whatever the retry counts say. None: the retry counts rule.
    user_timeout: float | None = None
    # RFC 4987 SYN cookies when a listener's SYN backlog is full (see tcp/syncookie.py).
    syn_cookies: bool = True
    # Connections per stack, any state but TIME-WAIT: connect() beyond it raises
    # TooManyConnections; a SYN beyond it is dropped (counter listen_overflow).
    max_connections: int = 65536

    def __post_init__(self) -> None:
        if not 88 <= self.mss <= 65495:
            raise ValueError(f"mss {self.mss} out of range 88..65495")
        if self.msl < 0:
            raise ValueError("msl must be >= 0")
        if not 0 < self.delayed_ack_timeout <= 0.2:
            raise ValueError("delayed_ack_timeout must be in (0, 0.2]")
        if not 0 < self.rto_min <= self.rto_initial <= self.rto_max:
            raise ValueError("need 0 < rto_min <= rto_initial <= rto_max")
        if self.send_buffer < 1 or self.receive_buffer < 1:
            raise ValueError("buffers must be positive")
        if self.keepalive_idle <= 0 or self.keepalive_interval <= 0:
            raise ValueError("keepalive_idle and keepalive_interval must be > 0")
        if self.keepalive_probes < 1:
            raise ValueError("keepalive_probes must be >= 1")
        if self.user_timeout is not None and self.user_timeout <= 0:
            raise ValueError("user_timeout must be > 0 (or None)")
        if self.congestion not in ALGORITHMS:
            raise ValueError(f"unknown congestion control {self.congestion!r}; "
                             f"choose one of {', '.join(ALGORITHMS)}")
        stride, offset = self.port_stride
        if not (1 <= stride <= self.ephemeral_ports[1] - self.ephemeral_ports[0] + 1
                and 0 <= offset < stride):
            raise ValueError(f"port_stride {self.port_stride}: need 1 <= stride <= the "
                             f"ephemeral range's size and 0 <= offset < stride")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if self.receive_buffer > (65535 << 14):
            raise ValueError("receive_buffer exceeds the largest scaled window")

    @property
    def rcv_wscale(self) -> int:
        """The shift we offer: the smallest that fits the receive buffer."""
        if not self.window_scale:
            return 0
        shift = 0
        while (self.receive_buffer >> shift) > 65535:
            shift += 1
        return shift
