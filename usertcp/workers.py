"""`--workers N`: N processes, each its own event loop and engine, on one multi-queue TUN.

The supervisor (this process) opens N queues of one TUN device (IFF_MULTI_QUEUE), gives the
device the steering program of `phy.steering`, configures the kernel side once, and forks one
worker per queue. A worker serves only the packets of its queue, so listeners, TIME-WAIT and
port choice stay per worker and nothing is shared:

  * passive opens: the kernel hashes its own (address, port) to a queue; every packet of the
    connection hashes the same, so the worker that saw the SYN sees the rest;
  * active opens: worker i picks only ephemeral ports p with p % N == i, and the program
    sends a packet whose destination port is ephemeral to queue port % N: the replies reach
    the worker that opened the connection however long it stays idle;
  * ICMP and UDP go to worker 0.

A service port inside the ephemeral range (32768-60999) would look like an active open to the
program: its connections would all go to worker port % N. Serve outside that range.

Without the program (no CAP_BPF, an old kernel) the kernel's flow table steers: passive opens
still work, but replies to an active open may reach another worker, which resets it (in
theory only after ~3 s of silence; on Linux 6.18 even the SYN-ACK went astray). That is
logged as a warning at start.

The supervisor forwards SIGINT and SIGTERM (as SIGTERM) and SIGUSR1 to the workers by PID,
exits when they have all ended, and reports a worker that dies on its own, then stops the
others (a queue nobody reads would blackhole its share of the flows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import structlog

from .phy import FaultInjector, PcapWriter, TunDevice, configure_host_side
from .phy.netlink import check_stack_addresses
from .phy.steering import SteeringError, attach
from .tcp.config import TcpConfig

READY_TIMEOUT = 30.0  # for every worker to start serving
STOP_GRACE = 10.0  # after SIGTERM, before SIGKILL
POLL = 0.05
MAX_WORKERS = 64
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


@dataclasses.dataclass
class WorkerSpec:
    """What every worker shares; `ready_fields` go into the supervisor's `service.ready`."""

    tun: str
    addresses: list[str]
    host_addresses: list[str]
    mtu: int
    offload: bool
    config: TcpConfig
    workers: int
    pcap: str | None = None
    ready_fields: dict = dataclasses.field(default_factory=dict)


# run_worker(open_stack, ready) runs one worker's service to its end and returns its exit code.
RunWorker = Callable[[Callable, Callable], int]


def serve(spec: WorkerSpec, run_worker: RunWorker) -> int:
    """Run `spec.workers` workers until a signal (or a worker's death) ends them."""
    if not 2 <= spec.workers <= MAX_WORKERS:
        raise ValueError(f"--workers: from 2 to {MAX_WORKERS} for serve(), not {spec.workers}")
    _log_whole_lines()
    log = structlog.get_logger("usertcp").bind(part="workers")
    spec = dataclasses.replace(
        spec, addresses=check_stack_addresses(spec.addresses, spec.host_addresses, spec.tun))
    queues = TunDevice.open_queues(spec.tun, spec.workers, spec.mtu, offload=spec.offload)
    try:
        steering = _steer(queues[0], spec, log)
        configure_host_side(spec.tun, spec.host_addresses, spec.mtu)
    except BaseException:
        for queue in queues:
            queue.close()
        raise
    ready_r, ready_w = os.pipe()
    pids: dict[int, int] = {}
    # Blocked until the handlers are in place: a signal in between would orphan workers.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        for index in range(spec.workers):
            pid = os.fork()
            if pid == 0:
                _worker(index, queues, ready_r, ready_w, spec, run_worker)
            pids[pid] = index
    except BaseException:
        _kill(pids, signal.SIGKILL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        raise
    finally:
        os.close(ready_w)
        for queue in queues:
            queue.close()  # each worker holds its own
    return _Supervisor(pids, ready_r, log, spec, steering).run()


def pcap_path(path: str, index: int) -> str:
    """Worker `index`'s capture: cap.pcap -> cap.0.pcap."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.{index}{p.suffix}"))


def _steer(queue: TunDevice, spec: WorkerSpec, log) -> str:
    try:
        attach(queue.fileno(), spec.workers, spec.config.ephemeral_ports)
    except SteeringError as exc:
        log.warning("steering.unavailable", error=str(exc),
                    effect="the kernel's flow table steers: passive opens work, but replies "
                           "to active opens may reach another worker, which resets them")
        return "flow-table"
    return "ebpf"


def _kill(pids, sig: int) -> None:
    for pid in list(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


# ------------------------------------------------------------------ a worker (forked child)

def _worker(index: int, queues: list[TunDevice], ready_r: int, ready_w: int, spec: WorkerSpec,
            run_worker: RunWorker) -> NoReturn:
    code = 1
    try:
        os.close(ready_r)
        for other, queue in enumerate(queues):
            if other != index:
                queue.close()
        _tag_logs(index)
        log = structlog.get_logger("usertcp")

        def ready(stack) -> None:
            log.info("worker.ready", pid=os.getpid(), port_stride=stack.config.port_stride)
            os.write(ready_w, bytes([index]))
            os.close(ready_w)
            # The loop's handlers are in place now: let pending signals reach them.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

        code = run_worker(_opener(spec, index, queues[index]), ready)
    except Exception as exc:  # noqa: BLE001 (reported; the supervisor sees the exit code)
        with contextlib.suppress(Exception):
            structlog.get_logger("usertcp").error("worker.failed", error=str(exc),
                                                  kind=type(exc).__name__)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # never return into the supervisor's code


class _LineWriter:
    """A structlog logger that writes each line with one write(2): the workers share stderr,
    and print()'s separate writes of a line and its newline would interleave."""

    def msg(self, message: str) -> None:
        data = (message + "\n").encode(errors="backslashreplace")
        for _ in range(len(data)):  # a pipe may take a long line in parts
            data = data[os.write(2, data):]
            if not data:
                return

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def _log_whole_lines() -> None:
    sys.stderr.flush()
    structlog.configure(logger_factory=lambda *_args: _LineWriter())


def _tag_logs(index: int) -> None:
    """Every log line of this worker carries `worker: index`."""
    processors = structlog.get_config()["processors"]

    def tag(_logger, _name, event: dict) -> dict:
        event.setdefault("worker", index)
        return event

    structlog.configure(processors=[tag, *processors])


def _opener(spec: WorkerSpec, index: int, queue: TunDevice):
    """open_stack(args, fault) for this worker: the CLI's service runs on what it yields."""

    @contextlib.asynccontextmanager
    async def open_stack(_args, fault):
        from .aio.driver import Stack

        device = queue
        try:
            if fault:  # each worker its own seed, logged by the service
                device = FaultInjector(device, **{**fault, "seed": fault["seed"] + index})
            if spec.pcap:
                device = PcapWriter(device, pcap_path(spec.pcap, index))
            config = dataclasses.replace(spec.config, port_stride=(spec.workers, index))
            stack = Stack(device, spec.addresses, config=config)
        except BaseException:
            device.close()
            raise
        try:
            yield stack
        finally:
            await stack.aclose()

    return open_stack


# ------------------------------------------------------------------ the supervisor

class _Supervisor:
    def __init__(self, pids: dict[int, int], ready_r: int, log, spec: WorkerSpec,
                 steering: str) -> None:
        self.live = dict(pids)  # pid -> worker index
        self.all_pids = dict(pids)
        self.ready_r: int | None = ready_r
        self.ready: set[int] = set()
        self.log = log
        self.spec = spec
        self.steering = steering
        self.stop_at: float | None = None
        self.failed = False

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        started = time.monotonic()
        try:
            while self.live:
                self._reap()
                if self.ready_r is not None:
                    self._read_ready()
                    if self.ready_r is not None and time.monotonic() - started > READY_TIMEOUT:
                        self._fail("workers.not_ready", ready=sorted(self.ready))
                        os.close(self.ready_r)
                        self.ready_r = None
                else:
                    time.sleep(POLL)
                if self.stop_at is not None and time.monotonic() - self.stop_at > STOP_GRACE:
                    self.log.error("workers.killed", pids=sorted(self.live))
                    _kill(self.live, signal.SIGKILL)
                    self.stop_at = time.monotonic()
        finally:
            if self.ready_r is not None:
                os.close(self.ready_r)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.log.info("workers.stopped", failed=self.failed)
        return 1 if self.failed else 0

    def _on_signal(self, sig: int, _frame) -> None:
        if sig == signal.SIGUSR1:
            _kill(self.live, signal.SIGUSR1)
        else:
            self._stop()

    def _stop(self) -> None:
        if self.stop_at is None:
            self.stop_at = time.monotonic()
        _kill(self.live, signal.SIGTERM)

    def _fail(self, event: str, **fields) -> None:
        self.log.error(event, **fields)
        self.failed = True
        self._stop()

    def _reap(self) -> None:
        for _ in range(len(self.live)):
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            index = self.live.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stop_at is None or code not in (0, -signal.SIGTERM):
                what = f"signal {-code}" if code < 0 else f"status {code}"
                self._fail("worker.died", worker_index=index, pid=pid, exit=what)

    def _read_ready(self) -> None:
        readable, _, _ = select.select([self.ready_r], [], [], POLL)
        if not readable:
            return
        data = os.read(self.ready_r, 64)
        self.ready.update(data)
        if len(self.ready) == self.spec.workers or not data:
            os.close(self.ready_r)
            self.ready_r = None
            if len(self.ready) == self.spec.workers and self.stop_at is None:
                self.log.info("service.ready", workers=self.spec.workers,
                              pids=sorted(self.all_pids), steering=self.steering,
                              **self.spec.ready_fields)
