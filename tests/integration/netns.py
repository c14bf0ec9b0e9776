"""Private network namespaces for integration tests: usertcp.netns, plus what tests need.

Each :class:`NetNS` is a named namespace (``ip netns add``) with its loopback up. Commands run inside it
through ``ip netns exec``; processes started with :meth:`NetNS.popen` are tracked and ended by PID when the
namespace is closed, and the namespace is deleted even if the test failed.

    with NetNS.create() as ns:
        server = ns.popen([sys.executable, "-m", "http.server", "8000", "--bind", "127.0.0.1"])
        ns.wait_port("127.0.0.1", 8000)
        ns.run(["curl", "-sS", "http://127.0.0.1:8000/"], check=True)
"""

from __future__ import annotations

import sys
from typing import Any

from usertcp import netns as _netns
from usertcp.netns import RUN_TIMEOUT, exists, reap_stale

__all__ = ["RUN_TIMEOUT", "STOP_TIMEOUT", "NetNS", "exists", "reap_stale", "unavailable_reason"]

STOP_TIMEOUT = _netns.STOP_TIMEOUT
"""How long a tracked process gets after SIGTERM before it is sent SIGKILL (tests may shorten it)."""

# One connect attempt every 50 ms until the deadline; exit 0 once connected, 1 on timeout.
_WAIT_PORT = """\
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        sys.exit(0)
    except OSError as exc:
        if time.monotonic() >= deadline:
            sys.exit(f"{host}:{port}: {exc}")
    time.sleep(0.05)
"""


class NetNS(_netns.NetNS):
    """A named network namespace owned by the test that created it."""

    @property
    def stop_timeout(self) -> float:
        return STOP_TIMEOUT  # looked up here, so that a test can monkeypatch this module's

    def python(self, code: str, *args: str, **kw: Any) -> Any:
        """Run ``python -c CODE ARGS...`` (this interpreter) inside the namespace."""
        return self.run([sys.executable, "-c", code, *args], **kw)

    def wait_port(self, host: str, port: int, timeout: float = 10.0) -> None:
        """Return once a TCP connect to ``host:port`` inside the namespace succeeds.

        Polls every 50 ms for at most ``timeout`` seconds; raises :class:`TimeoutError` after that.
        """
        res = self.python(_WAIT_PORT, host, str(port), str(timeout), capture_output=True,
                          text=True, timeout=timeout + 30)
        if res.returncode != 0:
            raise TimeoutError(
                f"nothing accepted on {host}:{port} in netns {self.name} within {timeout} s: "
                f"{res.stderr.strip()}"
            )

    def nft_loss(self, ifname: str, percent: int) -> None:
        """Drop ``percent`` % of packets received or sent on ``ifname`` (nftables, inet table).

        Calling it again replaces the rules; ``percent=0`` drops nothing.
        """
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be in 0..100, not {percent}")
        table = "inet usertcp_loss"
        # numgen ... mod 100 yields 0..99, so "< 100" is out of range for nft: 100 % is a plain drop.
        match = "" if percent == 100 else f"numgen random mod 100 < {percent} "
        rule_in = f'iifname "{ifname}" {match}drop' if percent else ""
        rule_out = f'oifname "{ifname}" {match}drop' if percent else ""
        rules = f"""
add table {table}
flush table {table}
table {table} {{
    chain input {{
        type filter hook input priority 0; policy accept;
        {rule_in}
    }}
    chain output {{
        type filter hook output priority 0; policy accept;
        {rule_out}
    }}
}}
"""
        self.run(["nft", "-f", "-"], input=rules, text=True, check=True, capture_output=True)


def unavailable_reason() -> str | None:
    """Why integration tests cannot run here, or None if they can."""
    reason = _netns.unavailable_reason()
    return f"integration tests {reason}" if reason else None
