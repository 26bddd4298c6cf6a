"""pg_dump and pg_restore, wrapped once: argv lists, secrets in the environment, typed errors.

Children die with the task: they get SIGKILL from the kernel when the task process dies
(``PR_SET_PDEATHSIG``) and are killed explicitly when the task raises or is interrupted.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pg_backup.core.errors import ToolFailed, ToolNotFound

_PR_SET_PDEATHSIG = 1
# Variables a child must not inherit: stray libpq settings would silently change what it
# connects to, and Airflow connection URIs carry passwords pg_dump has no use for.
_SCRUB_PREFIXES = ("PG", "AIRFLOW_CONN_", "AIRFLOW__DATABASE__", "AIRFLOW__CORE__FERNET")


def tool_path(name: str, pg_bin_dir: str | None = None) -> str:
    """Find ``pg_dump``/``pg_restore`` in ``pg_bin_dir`` or on PATH."""
    if pg_bin_dir:
        candidate = Path(pg_bin_dir) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        raise ToolNotFound(
            f"{name} not found in dump.pg_bin_dir {pg_bin_dir!r}: point pg_bin_dir at the "
            "directory holding the PostgreSQL client programs (e.g. /usr/lib/postgresql/17/bin)"
        )
    found = shutil.which(name)
    if not found:
        raise ToolNotFound(
            f"{name} is not on PATH: install the PostgreSQL client (postgresql-client-N) or set "
            "dump.pg_bin_dir"
        )
    return found


def tool_version(path: str) -> tuple[int, str]:
    """Major version and full version line of a client program."""
    out = subprocess.run(
        [path, "--version"], capture_output=True, text=True, check=True, env=child_env({})
    ).stdout.strip()
    match = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not match:
        raise ToolNotFound(f"cannot read the version of {path}: {out!r}")
    return int(match.group(1)), out


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The worker's environment without libpq settings and secrets, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env.update(extra)
    return env


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the explicit kill in ``child`` still applies


@contextmanager
def child(
    argv: Sequence[str], env: dict[str, str], stdout: IO[bytes] | int | None = subprocess.DEVNULL
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a child whose stderr goes to a temp file; kill it if the block does not finish it."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            list(argv),
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=err,
            preexec_fn=_die_with_parent,
        )
        proc.stderr_file = err  # type: ignore[attr-defined]
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def stderr_of(proc: subprocess.Popen[bytes]) -> str:
    """What a child from ``child`` wrote to stderr (with the path, when its disk was full).

    pg_dump says "could not write to output file: No space left on device" without naming
    the file; its ``--file=`` argument does.
    """
    err = proc.stderr_file  # type: ignore[attr-defined]
    err.seek(0)
    text = err.read().decode("utf-8", "replace")
    if "No space left on device" in text:
        argv = proc.args if isinstance(proc.args, list) else []
        outputs = [str(a)[len("--file=") :] for a in argv if str(a).startswith("--file=")]
        for output in outputs:
            try:
                free = f"{shutil.disk_usage(Path(output).parent).free / 1e9:,.2f} GB free"
            except OSError:
                free = "free space unknown"
            text += (
                f"\nerror: no space left on device writing {output} ({free} there): free space on "
                "that filesystem, or point staging_dir at a larger volume"
            )
    return text


def run(argv: Sequence[str], env: dict[str, str], hint: str = "") -> str:
    """Run to completion; return stdout; raise ToolFailed with stderr on a non-zero exit."""
    with tempfile.TemporaryFile() as out, child(argv, env, stdout=out) as proc:
        code = proc.wait()
        if code != 0:
            raise ToolFailed(Path(argv[0]).name, code, stderr_of(proc), hint)
        out.seek(0)
        return out.read().decode("utf-8", "replace")
