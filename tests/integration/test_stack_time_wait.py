"""With --msl 1 TIME-WAIT lasts 2 s: seen in the connection table the CLI logs on SIGUSR1."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from .netns import NetNS
from .stackproc import STACK, start_service, timestamp

SLACK = 0.8  # how late past 2*MSL the entry may still be seen (timer, polling, a loaded machine)


def test_time_wait_lasts_two_msl(netns: NetNS, tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("<p>bye</p>\n")
    stack = start_service(netns, tmp_path, "http", "--root", str(root), "--msl", "1")
    # Connection: close makes the stack send the first FIN, so the stack's side is the one in TIME-WAIT.
    res = netns.run(["curl", "-sS", "--http1.1", "-H", "Connection: close", f"http://{STACK}/"],
                    capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "<p>bye</p>\n"
    entered = stack.wait_for("tcp.state", lambda e: e["new"] == "TIME-WAIT", timeout=10)
    assert entered["old"] in ("FIN-WAIT-2", "CLOSING"), entered
    t_enter = timestamp(entered)
    remote = entered["remote"]

    # Poll the table (bounded) until the entry is gone: (seconds since entry, row or None).
    seen: list[tuple[float, dict | None]] = []
    deadline = time.monotonic() + 2 + SLACK + 5
    while time.monotonic() < deadline:
        request = len(stack.events("connections"))
        table = stack.status()
        at = timestamp(stack.events("connections")[request]) - t_enter
        rows = [r for r in table if f"{r['remote'][0]}:{r['remote'][1]}" == remote]
        assert len(rows) <= 1, rows
        seen.append((at, rows[0] if rows else None))
        if not rows:
            break
        time.sleep(0.1)
    present = [(at, row) for at, row in seen if row is not None]
    gone = [at for at, row in seen if row is None]

    assert present, f"TIME-WAIT never seen in the table: {seen}"
    first_at, first_row = present[0]
    assert first_at < 1.5, seen
    assert first_row["state"] == "TIME-WAIT", first_row
    assert 0 < first_row["timers"]["time_wait"] <= 2.0, first_row
    assert all(row["state"] == "TIME-WAIT" for _, row in present), present
    # Still there late in its life, and gone soon after 2 s, not before.
    assert present[-1][0] >= 1.5, seen
    assert gone, f"TIME-WAIT still present {seen[-1][0]:.2f} s after it began: {seen}"
    assert 2.0 - 0.05 <= gone[0] <= 2.0 + SLACK, seen

    expired = stack.wait_for(
        "tcp.state", lambda e: e["old"] == "TIME-WAIT" and e["remote"] == remote, timeout=5)
    assert expired["new"] == "CLOSED" and "2msl" in expired["cause"], expired
    assert 2.0 - 0.05 <= timestamp(expired) - t_enter <= 2.0 + SLACK, expired
    assert stack.stop(signal.SIGINT) == 0, stack.text()
