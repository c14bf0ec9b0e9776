"""The namespace launcher of `usertcp run`: COMMAND in its own network and mount namespaces.

`spawn` starts a helper (`_child.py`) that unshares a network and a mount namespace (and, when
not root, a user namespace that keeps the user's own uid and gid, as slirp4netns does), shows
the program `nameserver DNS` in /etc/resolv.conf, creates and configures the TUN device, hands
its file descriptor back, and waits. `Sandbox.start` lets it exec COMMAND.

The helper is a fresh interpreter (subprocess), not os.fork: the caller may already run threads
(an event loop's executor, a logger), and a forked copy of a threaded process may deadlock on
a lock held by a thread that does not exist in the copy; a clean process also inherits no event
loop, signal handlers or descriptors by accident, and unshare(CLONE_NEWUSER) needs a
single-threaded process.

The helper is killed if the thread that called `spawn` ends (PR_SET_PDEATHSIG, kept across exec
so COMMAND never outlives usertcp): call `spawn` from a thread that lives as long as the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Self

from ..phy.errors import DeviceError, InvalidAddress, check_mtu
from ..phy.netlink import parse_host_address
from ..phy.tun import TunDevice, validate_name

_CHILD = Path(__file__).with_name("_child.py")
SETUP_TIMEOUT = 30.0  # seconds for the helper to start Python, unshare and configure
EXEC_TIMEOUT = 10.0  # seconds for exec to succeed or fail once started


class SandboxError(DeviceError):
    """The namespace could not be made; str() is one user-facing line (the CLI exits 2)."""

    reason = "sandbox"


class ExecFailed(Exception):
    """COMMAND could not be executed: str() is the shell's line, `status` 127 or 126."""

    def __init__(self, line: str, status: int) -> None:
        super().__init__(line)
        self.status = status


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def spawn(
    command: list[str],
    *,
    mtu: int = 65520,
    offload: bool = True,
    ifname: str = "tun0",
    address: str = "10.0.2.100/24",
    gateway: str = "10.0.2.2",
    dns: str = "10.0.2.3",
    address6: str | None = "fd00::100/64",
    gateway6: str | None = "fd00::2",
) -> Sandbox:
    """Make the namespace for COMMAND and return with it blocked before exec.

    `address6`/`gateway6`: the program's IPv6 address and default route (None: no IPv6; where
    the kernel has none, the sandbox's warnings say so). /etc/resolv.conf names `dns` only.

    Raises SandboxError (or another DeviceError for a bad name, MTU or address); on every error
    nothing is left behind.
    """
    if not command or not all(isinstance(arg, str) for arg in command):
        raise SandboxError("no command to run: give it after --, e.g. usertcp run -- curl URL")
    validate_name(ifname)
    check_mtu(mtu)
    iface = parse_host_address(address)
    for what, text in (("gateway", gateway), ("DNS server", dns)):
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise InvalidAddress(f"malformed {what} address {text!r}: expected IPv4") from None
    iface6 = None
    if address6 is not None or gateway6 is not None:
        try:
            if "/" not in (address6 or ""):
                raise ValueError
            iface6 = ipaddress.IPv6Interface(address6 or "")
            ipaddress.IPv6Address(gateway6 or "")
        except ValueError:
            raise InvalidAddress(f"malformed IPv6 address {address6!r} or gateway {gateway6!r}: "
                                 f"expected ADDR/PREFIX and an address") from None
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        resolv_fd, resolv_path = tempfile.mkstemp(prefix="usertcp-resolv-", suffix=".conf")
    except OSError as exc:
        parent_sock.close()
        child_sock.close()
        raise SandboxError(
            f"cannot write the program's resolv.conf in {tempfile.gettempdir()}: {exc.strerror}"
        ) from None
    proc: subprocess.Popen[bytes] | None = None
    try:
        with os.fdopen(resolv_fd, "w") as f:
            f.write(f"nameserver {dns}\n")
        os.chmod(resolv_path, 0o644)  # COMMAND may switch to another user
        config = {
            "fd": child_sock.fileno(),
            "parent": os.getpid(),
            "mtu": mtu,
            "offload": bool(offload),
            "ifname": ifname,
            "address": f"{iface.ip}/{iface.network.prefixlen}",
            "gateway": gateway,
            "address6": f"{iface6.ip}/{iface6.network.prefixlen}" if iface6 else None,
            "gateway6": str(ipaddress.IPv6Address(gateway6)) if iface6 else None,
            "resolv": resolv_path,
        }
        try:
            # -P: the helper's folder (this package) must not shadow modules it imports.
            proc = subprocess.Popen(
                [sys.executable, "-P", str(_CHILD), json.dumps(config), *command],
                pass_fds=(child_sock.fileno(),),
            )
        except OSError as exc:
            raise SandboxError(f"cannot start the namespace helper: {exc.strerror}") from None
        child_sock.close()
        pidfd = os.pidfd_open(proc.pid)  # the child is unreaped until we wait: the pid is valid
        try:
            tun_fd, warnings = _await_ready(parent_sock, proc)
            try:
                device = TunDevice.adopt(tun_fd, ifname, mtu, offload=offload)
            except BaseException:
                os.close(tun_fd)
                raise
        except BaseException:
            os.close(pidfd)
            raise
        return Sandbox(proc, pidfd, device, parent_sock, warnings)
    except BaseException:
        if proc is not None:
            _kill(proc)
        parent_sock.close()
        raise
    finally:
        child_sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(resolv_path)  # mounted by now, or never to be


def _await_ready(sock: socket.socket, proc: subprocess.Popen[bytes]) -> tuple[int, list[str]]:
    sock.settimeout(SETUP_TIMEOUT)
    try:
        message, fds, _flags, _addr = socket.recv_fds(sock, 65536, 1)
    except TimeoutError:
        raise SandboxError(
            f"the namespace helper did not finish its set-up within {SETUP_TIMEOUT:g} s"
        ) from None
    if message[:1] == b"R" and len(fds) == 1:
        return fds[0], json.loads(message[1:])["warnings"]
    for fd in fds:
        os.close(fd)
    if message[:1] == b"E":
        raise SandboxError(message[1:].decode(errors="replace"))
    status = _kill(proc)  # it closed its end by exiting
    raise SandboxError(f"the namespace helper exited (status {status}) before its set-up ended")


def _kill(proc: subprocess.Popen[bytes]) -> int:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    return _exit_status(proc.wait())


class Sandbox:
    """COMMAND's process, in its namespaces, and the TUN device that is its only way out."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        pidfd: int,
        device: TunDevice,
        control: socket.socket,
        warnings: list[str],
    ) -> None:
        self._proc = proc
        self.pid: int = proc.pid
        self.device = device
        # Set-up steps that failed without making the sandbox unusable (e.g. /proc/sys read-only).
        self.warnings = warnings
        self._control: socket.socket | None = control
        self._pidfd: int | None = pidfd
        self._waiter: asyncio.Future[int] | None = None
        self._started = False
        self.status: int | None = None  # shell-style exit status, once reaped

    def start(self) -> None:
        """Exec COMMAND; raises ExecFailed (127/126) when it cannot be executed."""
        if self._started:
            raise RuntimeError("the sandbox was already started")
        self._started = True
        control = self._control
        if control is None:
            raise RuntimeError("the sandbox is closed")
        try:
            control.settimeout(EXEC_TIMEOUT)
            control.send(b"G")
            answer = control.recv(4096)  # end of file: exec closed the socket
        except TimeoutError:
            raise SandboxError(f"COMMAND was not executed within {EXEC_TIMEOUT:g} s") from None
        except OSError as exc:
            raise SandboxError(f"the namespace helper vanished: {exc.strerror}") from None
        finally:
            self._control = None
            control.close()
        if answer[:1] == b"X":
            status, _, line = answer[1:].decode(errors="replace").partition(" ")
            raise ExecFailed(line, int(status))

    def send_signal(self, sig: int) -> None:
        if self._pidfd is not None and self.status is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    async def wait(self) -> int:
        """COMMAND's exit status: its code, or 128 + the signal that ended it."""
        if self.status is not None:
            return self.status
        if self._pidfd is None:
            raise RuntimeError("the sandbox is closed")
        if self._waiter is None:
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            loop.add_reader(self._pidfd, self._on_exit, loop)
        return await asyncio.shield(self._waiter)

    def _on_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
        self._reap()

    def _reap(self) -> int:
        if self.status is None:
            self.status = _exit_status(self._proc.wait())
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self.status)
        return self.status

    def close(self) -> None:
        """Kill (SIGKILL) and reap COMMAND if it still runs; close the device and descriptors."""
        if self.status is None:
            self.send_signal(signal.SIGKILL)
            waiter = self._waiter
            if waiter is not None and not waiter.done() and self._pidfd is not None:
                with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                    waiter.get_loop().remove_reader(self._pidfd)
            self._reap()
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.device.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sandbox(pid={self.pid}, device={self.device.name!r}, status={self.status})"
