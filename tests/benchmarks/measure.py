"""Run one command and measure it: wall and CPU seconds, peak RSS of every process involved.

CPU seconds of the command come from ``wait4`` (the kernel's own count, including every
descendant it reaped). Peak RSS per process is the kernel's high-water mark of its own address
space (``VmHWM`` in ``/proc/<pid>/status``), read by a sampler that walks the command's process
tree and the PostgreSQL backends serving it (found by database name in their process titles),
so the server's share is reported too. ``ru_maxrss`` is not used: Linux carries the high-water
mark of the image a process replaced at exec into it, so a child forked from a 60 MB Python
parent reports at least 60 MB whatever it uses itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY = 0.2


@dataclass
class ProcStat:
    """One process seen while a command ran."""

    pid: int
    name: str
    role: str  # "ours" (the command's tree) or "server" (a PostgreSQL backend serving it)
    cpu: float = 0.0  # user + system seconds, as last sampled
    peak_rss: int = 0  # bytes, VmHWM

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Measurement:
    """What one run of one command cost."""

    label: str
    wall: float
    cpu: float  # exact (wait4): the command and every descendant it waited for
    returncode: int
    procs: list[ProcStat] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def server_cpu(self) -> float:
        """Sampled CPU seconds of the PostgreSQL backends that served the command."""
        return sum(p.cpu for p in self.procs if p.role == "server")

    @property
    def peak_rss_ours(self) -> int:
        """Peak RSS of the largest process of the command's own tree."""
        return max([0] + [p.peak_rss for p in self.procs if p.role == "ours"])

    @property
    def peak_rss_server(self) -> int:
        """Peak RSS of the largest backend (includes the shared buffers it touched)."""
        return max([0] + [p.peak_rss for p in self.procs if p.role == "server"])

    def by_name(self) -> dict[str, dict[str, Any]]:
        """Processes grouped by name: how many, peak RSS of the largest, CPU of all."""
        out: dict[str, dict[str, Any]] = {}
        for proc in self.procs:
            key = f"{proc.role}:{proc.name}"
            entry = out.setdefault(
                key, {"role": proc.role, "name": proc.name, "count": 0, "peak_rss": 0, "cpu": 0.0}
            )
            entry["count"] += 1
            entry["peak_rss"] = max(entry["peak_rss"], proc.peak_rss)
            entry["cpu"] += proc.cpu
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "wall": self.wall,
            "cpu": self.cpu,
            "returncode": self.returncode,
            "server_cpu": self.server_cpu,
            "peak_rss_ours": self.peak_rss_ours,
            "peak_rss_server": self.peak_rss_server,
            "procs": list(self.by_name().values()),
            "extra": self.extra,
        }


class CommandFailed(RuntimeError):
    """A measured command exited non-zero."""


def _stat(pid: int) -> tuple[int, str, float] | None:
    """(ppid, comm, cpu seconds) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    close = raw.rfind(")")
    comm = raw[raw.find("(") + 1 : close]
    rest = raw[close + 2 :].split()
    return int(rest[1]), comm, (int(rest[11]) + int(rest[12])) / CLK_TCK


def _hwm(pid: int) -> int:
    """VmHWM of a process in bytes (0 if gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def postmaster_pid(data_hint: str = "/var/run/postgresql") -> int | None:
    """The local postmaster: the parent of every backend (None if not found)."""
    for pidfile in sorted(Path(data_hint).glob("*.pid")):
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return None


def _name_of(comm: str, argv: list[str]) -> str:
    """A readable process name: python stage runners by their stage."""
    if comm.startswith("python") and "tests.benchmarks.stages" in argv:
        at = argv.index("tests.benchmarks.stages")
        return "python " + (argv[at + 1] if len(argv) > at + 1 else "?")
    if comm.startswith("python") or comm in {"airflow"}:
        return "python"
    return comm


class Sampler(threading.Thread):
    """Polls the command's process tree and the backends serving the given databases."""

    def __init__(self, root: int, databases: Iterable[str], postmaster: int | None):
        super().__init__(daemon=True)
        self.root = root
        self.databases = set(databases)
        self.postmaster = postmaster
        self.stats: dict[int, ProcStat] = {}
        self._backend: dict[int, bool] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_EVERY):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def _is_ours_backend(self, pid: int, known: set[int]) -> bool:
        title = " ".join(_cmdline(pid))
        words = title.split()
        if "parallel worker for PID" in title:
            try:
                return int(words[-1]) in known
            except ValueError:
                return False
        return bool(self.databases.intersection(words))

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        table: dict[int, tuple[int, str, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            info = _stat(pid)
            if info is None:
                continue
            table[pid] = info
            children.setdefault(info[0], []).append(pid)
        ours: list[int] = []
        todo = [self.root]
        while todo:
            pid = todo.pop()
            if pid in table:
                ours.append(pid)
                todo.extend(children.get(pid, []))
        server: list[int] = []
        if self.postmaster and self.databases:
            known = {pid for pid, ok in self._backend.items() if ok}
            for pid in children.get(self.postmaster, []):
                if not self._backend.get(pid):  # a new backend may not show its database yet
                    self._backend[pid] = self._is_ours_backend(pid, known)
                if self._backend[pid]:
                    server.append(pid)
        for role, pids in (("ours", ours), ("server", server)):
            for pid in pids:
                _, comm, cpu = table[pid]
                stat = self.stats.get(pid)
                if stat is None:
                    name = "postgres" if role == "server" else _name_of(comm, _cmdline(pid))
                    stat = self.stats[pid] = ProcStat(pid, name, role)
                stat.cpu = max(stat.cpu, cpu)
                stat.peak_rss = max(stat.peak_rss, _hwm(pid))


def run_measured(
    label: str,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    databases: Iterable[str] = (),
    log: Path | None = None,
    stdout: Path | None = None,
    timeout: float = 4 * 3600,
    check: bool = True,
) -> Measurement:
    """Run ``argv`` to completion under the sampler and return what it cost."""
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
    err = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        started = time.monotonic()
        proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        sampler = Sampler(proc.pid, databases, postmaster_pid())
        sampler.start()
        killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            wall = time.monotonic() - started
            sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        for handle in (out, err):
            if hasattr(handle, "close"):
                handle.close()  # type: ignore[union-attr]
    measured = Measurement(
        label=label,
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        returncode=proc.returncode,
        procs=sorted(sampler.stats.values(), key=lambda p: (p.role, p.name, p.pid)),
    )
    if check and proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
        raise CommandFailed(f"{label}: {' '.join(argv)} exited {proc.returncode}\n{tail}")
    return measured
