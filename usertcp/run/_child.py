"""The helper that `namespace.spawn` starts: it builds the namespace, then becomes COMMAND.

Run as `python -P .../_child.py CONFIG_JSON COMMAND...` (not `-m usertcp...`: importing the usertcp
package costs ~0.2 s that this process does not need). Messages on the control socket (SEQPACKET,
fd CONFIG["fd"]), one per packet:
  child -> parent  b"E" + line                  setup failed (the child then exits 1)
                   b"R" + json, SCM_RIGHTS [tun]  ready; json = {"warnings": [...]}
                   b"X" + b"126 line" / b"127 line"   exec failed (the child exits with that status)
                   end of file after b"G"       exec succeeded (the socket is close-on-exec)
  parent -> child  b"G"                         exec COMMAND; end of file instead: exit
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import pwd
import signal
import socket
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
PR_SET_PDEATHSIG = 1
IFA_F_NODAD = 0x02  # linux/if_addr.h

TUN_PATH = "/dev/net/tun"
# The same values as usertcp.phy.vnet (a test checks they agree).
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TX_QUEUE_LEN = 4096  # as usertcp.phy.netlink: TUN's default 500 overflows under load

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """A failure before exec, as the one line the user sees."""


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _check_tun_access() -> None:
    """Before leaving the user's namespace: owner and mode still have their real names there."""
    try:
        os.close(os.open(TUN_PATH, os.O_RDWR))
    except FileNotFoundError:
        raise SetupError(
            f"{TUN_PATH} does not exist: load the tun module (modprobe tun) or, in a container, "
            f"pass the device through"
        ) from None
    except PermissionError:
        st = os.stat(TUN_PATH)
        raise SetupError(
            f"{TUN_PATH} is not accessible to {_user_name(os.geteuid())} (mode "
            f"{stat.S_IMODE(st.st_mode):04o}, owner {_user_name(st.st_uid)}): without root it "
            f"must be readable and writable by you (mode 0666, as on most distributions)"
        ) from None
    except OSError as exc:
        raise SetupError(f"cannot open {TUN_PATH}: {os.strerror(exc.errno or 0)}") from None


def _userns_disabled_reason() -> str | None:
    if _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
        return "kernel.unprivileged_userns_clone = 0"
    if _read_int("/proc/sys/user/max_user_namespaces") == 0:
        return "user.max_user_namespaces = 0"
    return None


def _unshare(rootless: bool) -> None:
    if not rootless:
        if _libc.unshare(CLONE_NEWNET | CLONE_NEWNS) != 0:
            code = ctypes.get_errno()
            raise SetupError(
                f"cannot create a network namespace: {os.strerror(code)}"
                + (" (root without CAP_SYS_ADMIN, e.g. in a container?)"
                   if code == errno.EPERM else "")
            )
        return
    reason = _userns_disabled_reason()
    if reason:
        raise SetupError(
            f"unprivileged user namespaces are disabled on this machine ({reason}): "
            f"run as root, or allow them"
        )
    uid, gid = os.geteuid(), os.getegid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) != 0:
        code = ctypes.get_errno()
        if code == errno.EPERM:
            raise SetupError(
                "unprivileged user namespaces are not allowed here (unshare: operation not "
                "permitted; a security policy or seccomp forbids them): run as root"
            )
        if code == errno.ENOSPC:
            raise SetupError(
                "cannot create a user namespace: the limit user.max_user_namespaces is reached"
            )
        raise SetupError(f"cannot create a user namespace: {os.strerror(code)}")
    # The program keeps the user's own ids; the capabilities of the new namespace end at exec.
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")


def _mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            None,
        ),
        f"mount {target}",
    )


def _private_mounts(resolv_source: str, warnings: list[str]) -> None:
    """As `ip netns exec`: mounts made here stay here; our resolv.conf; /sys of the new netns."""
    try:
        _mount(None, "/", None, MS_REC | MS_SLAVE)
        # mount(2) follows a symlinked /etc/resolv.conf to the file it names, as `ip netns exec`.
        target = os.path.realpath("/etc/resolv.conf")
        if not os.path.isfile(target):
            raise SetupError(
                f"cannot show the program nameserver: /etc/resolv.conf ({target}) does not exist"
            )
        _mount(resolv_source, target, None, MS_BIND)
    except OSError as exc:
        raise SetupError(f"cannot set up the private mount namespace: {exc.strerror}") from None
    try:
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        if os.statvfs("/sys").f_flag & os.ST_RDONLY:
            flags |= MS_RDONLY
        _mount("sysfs", "/sys", "sysfs", flags)
    except OSError as exc:
        warnings.append(f"/sys still shows the outer network namespace ({exc.strerror})")


def _open_tun(ifname: str, offload: bool) -> int:
    from pytun_pmd3 import TunTapDevice
    from pytun_pmd3.linux import IFF_NO_PI, IFF_TUN, IFF_VNET_HDR

    try:
        tun = TunTapDevice(name=ifname, flags=IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0))
    except FileNotFoundError:
        _check_tun_access()  # names the missing device
        raise
    except OSError as exc:
        raise SetupError(
            f"cannot create TUN device {ifname!r} in the new namespace: "
            f"{os.strerror(exc.errno or 0)}"
        ) from None
    fd = os.dup(tun.fileno())  # ours to send; pytun's own copy is closed now
    tun.close()
    if offload:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
        except OSError as exc:
            os.close(fd)
            raise SetupError(f"cannot enable offload on {ifname!r}: {exc.strerror}") from None
    return fd


def _ipv6_sysctls(ifname: str, warnings: list[str]) -> bool:
    """IPv6 on, but quiet: no router solicitations (usertcp is no router that advertises) and
    no address autoconfiguration from advertisements. False: IPv6 stays off (with a warning)."""
    conf = f"/proc/sys/net/ipv6/conf/{ifname}"
    try:
        for name, value in (("accept_ra", "0"), ("router_solicitations", "0"),
                            ("disable_ipv6", "0")):
            _write(f"{conf}/{name}", value)
    except OSError as exc:
        warnings.append(f"the program has no IPv6 ({conf}: {exc.strerror})")
        return False
    return True


def _configure(cfg: dict, rootless: bool, warnings: list[str]) -> None:
    from pyroute2 import IPRoute, NetlinkError  # after unshare: a user namespace needs one thread

    ifname = cfg["ifname"]
    address, prefixlen = cfg["address"].split("/")
    address6 = cfg.get("address6")
    # Before the link is up, so it never sends a router solicitation.
    ipv6 = bool(address6) and _ipv6_sysctls(ifname, warnings)
    if not address6:
        try:
            _write(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "1")
        except OSError:
            pass  # no IPv6 in this kernel, or /proc/sys read-only: the stack drops IPv6 anyway
    # Unprivileged ping (ICMP datagram sockets, IPv6's too); in a user namespace only our own
    # gid is mapped.
    gid = os.getegid()
    groups = f"{gid} {gid}" if rootless else "0 2147483647"
    try:
        _write("/proc/sys/net/ipv4/ping_group_range", groups)
    except OSError as exc:
        warnings.append(f"unprivileged ping is off in the namespace ({exc.strerror})")
    step = "netlink"
    try:
        with IPRoute() as ipr:
            step = "lo up"
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            index = ipr.link_lookup(ifname=ifname)[0]
            step = f"mtu {cfg['mtu']}"
            ipr.link("set", index=index, mtu=cfg["mtu"], txqlen=TX_QUEUE_LEN)
            step = f"address {cfg['address']}"
            ipr.addr("add", index=index, address=address, prefixlen=int(prefixlen))
            if ipv6:
                step = f"address {address6}"
                a6, p6 = address6.split("/")
                # nodad: nobody else is on this link, and the address is usable at once.
                ipr.addr("add", index=index, family=socket.AF_INET6, address=a6,
                         prefixlen=int(p6), flags=IFA_F_NODAD)
            step = "link up"
            ipr.link("set", index=index, state="up")
            step = f"default route via {cfg['gateway']}"
            ipr.route("add", dst="0.0.0.0/0", gateway=cfg["gateway"], oif=index)
            if ipv6:
                step = f"default route via {cfg['gateway6']}"
                ipr.route("add", family=socket.AF_INET6, dst="::/0",
                          gateway=cfg["gateway6"], oif=index)
    except NetlinkError as exc:
        text = os.strerror(exc.code) if exc.code else str(exc)
        raise SetupError(f"cannot configure {ifname!r} in the new namespace ({step}): {text}") \
            from None


def _setup(cfg: dict, ctl: socket.socket) -> None:
    warnings: list[str] = []
    rootless = os.geteuid() != 0
    if rootless:
        _check_tun_access()
    _unshare(rootless)
    _private_mounts(cfg["resolv"], warnings)
    tun_fd = _open_tun(cfg["ifname"], cfg["offload"])
    try:
        _configure(cfg, rootless, warnings)
        message = b"R" + json.dumps({"warnings": warnings}).encode()
        socket.send_fds(ctl, [message], [tun_fd])
    finally:
        os.close(tun_fd)


def _exec(command: list[str], ctl: socket.socket) -> None:
    """Become COMMAND; the socket closes on success, or carries the shell's one line."""
    os.set_inheritable(ctl.fileno(), False)
    # Python ignores these at start-up; a program expects the defaults (e.g. `yes | head`).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        missing = exc.errno in (errno.ENOENT, errno.ENOTDIR)
        status = 127 if missing else 126
        why = "not found" if missing else os.strerror(exc.errno or 0)
        line = f"usertcp: run: {command[0]}: {why}"
    try:
        ctl.send(b"X" + f"{status} {line}".encode(errors="replace"))
    except OSError:
        pass
    os._exit(status)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    command = sys.argv[2:]
    ctl = socket.socket(fileno=cfg["fd"])
    # Never outlive usertcp (kept across exec: a program whose network is gone should not linger).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != cfg["parent"]:
        os._exit(1)  # the parent died before the line above
    try:
        _setup(cfg, ctl)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes the one line
        line = str(exc) if isinstance(exc, SetupError) else f"{type(exc).__name__}: {exc}"
        try:
            ctl.send(b"E" + " ".join(line.split()).encode(errors="replace"))
        except OSError:
            pass
        os._exit(1)
    try:
        go = ctl.recv(16)
    except OSError:
        go = b""
    if go != b"G":
        os._exit(0)  # the parent closed the sandbox (or died) before starting COMMAND
    _exec(command, ctl)


if __name__ == "__main__":
    main()
