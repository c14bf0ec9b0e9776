"""`usertcp demo`, outside the namespace: checks, the namespace, the inner process, clean-up.

The command makes a private network namespace (usertcp-demo-<pid>), runs itself again
inside it (`ip netns exec NS python -m usertcp.demo --inner ...`, see story.py) and
deletes the namespace afterwards, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys

from ..ladder.text import Style, stream_takes_unicode
from ..netns import NetNS, reap_stale
from .scenarios import SCENARIOS
from .story import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, TUN

NETNS_PREFIX = "usertcp-demo"
MAX_MSL = 300.0
MAX_MESSAGE = 1000  # bytes: the demo is about the ladder, not bulk transfer


def _error(message: str) -> int:
    print(f"usertcp demo: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def preflight() -> str | None:
    """Why the demo cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return ("needs root: it creates a network namespace and a TUN device "
                "(run it with sudo, e.g. sudo scripts/demo)")
    if not os.path.exists("/dev/net/tun"):
        return ("/dev/net/tun is missing: load the tun module (modprobe tun) or, in a container, "
                "pass the device through (--device /dev/net/tun)")
    if shutil.which("ip") is None:
        return "needs the `ip` command (Debian/Ubuntu: apt-get install iproute2)"
    return None


def list_scenarios() -> str:
    width = max(map(len, SCENARIOS))
    lines = ["scenarios (usertcp demo --scenario NAME):"]
    lines += [f"  {name:<{width}}  {sc.summary}" for name, sc in SCENARIOS.items()]
    return "\n".join(lines)


class _Terminated(Exception):
    """SIGTERM or SIGHUP reached the outer process."""


def _raise_terminated(signum, frame):
    raise _Terminated(signum)


def _check(args) -> str | None:
    """What is wrong with the options, or None."""
    if args.scenario not in SCENARIOS:
        return (f"unknown scenario {args.scenario!r}; choose one of {', '.join(SCENARIOS)} "
                f"(see usertcp demo --list)")
    try:
        msl = float(args.msl)
    except (TypeError, ValueError):
        msl = float("nan")
    if not 0 < msl <= MAX_MSL:
        return f"--msl must be more than 0 and at most {MAX_MSL:g} seconds, not {args.msl}"
    if len(str(args.message).encode()) > MAX_MESSAGE:
        return f"--message is longer than {MAX_MESSAGE} bytes"
    if args.pcap:
        folder = os.path.dirname(os.path.abspath(args.pcap))
        if not os.path.isdir(folder):
            return f"--pcap: there is no directory {folder}"
        if os.path.isdir(args.pcap):
            return f"--pcap: {args.pcap} is a directory"
    return None


def run_demo(args) -> int:
    """The `usertcp demo` command (args: scenario, list, msl, message, ipv6, pcap)."""
    args.scenario = getattr(args, "scenario", None) or "normal"
    args.pcap = getattr(args, "pcap", None)
    if getattr(args, "list", False):
        print(list_scenarios(), flush=True)
        return EXIT_OK
    problem = _check(args) or preflight()
    if problem:
        return _error(problem)
    color = (sys.stdout.isatty() and not os.environ.get("NO_COLOR")
             and os.environ.get("TERM") != "dumb")
    pcap = os.path.abspath(args.pcap) if args.pcap else None
    reap_stale(NETNS_PREFIX)  # left by a demo killed with -9
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)

    saved = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    ns: NetNS | None = None
    interrupted = False
    rc = EXIT_FAILED
    try:
        try:
            ns = NetNS.create(NETNS_PREFIX, numbered=False)
        except OSError as exc:
            return _error(str(exc))
        cmd = [sys.executable, "-m", "usertcp.demo", "--inner", f"--netns={ns.name}",
               f"--scenario={args.scenario}", f"--msl={float(args.msl)!r}",
               f"--message={args.message}", "--color", "on" if color else "off",
               *(["--ipv6"] if getattr(args, "ipv6", False) else []),
               *([f"--pcap={pcap}"] if pcap else [])]
        sys.stdout.flush()
        # The child ignores SIGINT (an ignored signal stays ignored across exec): a ^C
        # reaches this process, which asks the child to stop with SIGTERM, by PID.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            child = ns.popen(cmd, env=env)
        finally:
            signal.signal(signal.SIGINT, old_int)
        rc = child.wait()
        if rc < 0:
            rc = 128 - rc
    except (KeyboardInterrupt, _Terminated):
        interrupted = True
        rc = EXIT_INTERRUPTED
    finally:
        # A second ^C must not cut the clean-up short.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            deleted = ns is not None and _delete(ns, color, announce=rc == EXIT_OK)
            if pcap and os.path.exists(pcap):
                _hand_over(pcap)
            if interrupted:
                print("\nusertcp demo: interrupted" + (
                    f"; network namespace {ns.name} deleted" if deleted else ""),
                    file=sys.stderr, flush=True)
        finally:
            signal.signal(signal.SIGINT, old_int)
            for sig, handler in saved.items():
                signal.signal(sig, handler)
    return rc


def _delete(ns: NetNS, color: bool, *, announce: bool) -> bool:
    """End the inner process (by PID) and delete the namespace; say so when asked."""
    try:
        ns.close()
    except OSError as exc:
        print(f"usertcp demo: warning: {exc}", file=sys.stderr, flush=True)
        return False
    if announce:
        style = Style(color, stream_takes_unicode(sys.stdout))
        print(style.dim(f"  cleaned up: network namespace {ns.name} deleted, {TUN} with it"),
              flush=True)
    return True


def _hand_over(path: str) -> None:
    """The capture belongs to whoever ran `sudo usertcp demo`, and anyone may read it."""
    with contextlib.suppress(OSError, ValueError):
        uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
        if uid and gid:
            os.chown(path, int(uid), int(gid))
        os.chmod(path, 0o644)
