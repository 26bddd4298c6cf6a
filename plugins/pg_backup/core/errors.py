"""Every error an operator can meet, under one base class.

The message of each says what is wrong and how to fix it. ``summary`` is that message on one
line: what ``pg-backup`` prints (never a traceback) and what a mail subject can carry. Errors
outside this tree are bugs, and are allowed to show their traceback.

Every message is redacted (``core.redact``) when the error is made: whatever path it takes
afterwards (a log, a traceback, the UI's import error, a mail, a report), no secret-looking
value that reached a message travels with it.
"""

from __future__ import annotations

from typing import Any

from pg_backup.core.redact import redact


class PgBackupError(Exception):
    """Base of every error an operator can meet: a bad input, a refused action, a failed proof."""

    def __init__(self, *args: Any):
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))

    @property
    def summary(self) -> str:
        """The message on one line (lines joined with ``; ``)."""
        lines = [line.strip() for line in str(self).splitlines() if line.strip()]
        return redact("; ".join(lines)) if lines else type(self).__name__


class ConfigError(PgBackupError, ValueError):
    """The configuration file is missing or invalid; the message names file, field and fix."""


class ParamError(PgBackupError, ValueError):
    """A trigger parameter (UI form or REST conf) is invalid; the message names the param."""


class BackupIdError(PgBackupError, ValueError):
    """A string is not a backup id of the form ``<target>_<YYYYMMDDTHHMMSSZ>_<kind>``."""


class KeyFormatError(PgBackupError, ValueError):
    """An age recipient or identity does not parse; the message names the field, never the key."""


class WrongKey(PgBackupError):
    """None of the private keys given decrypts the file (or the file is not age-encrypted)."""


class ConnectionConfigError(PgBackupError, ValueError):
    """An Airflow connection is missing or cannot describe what it is used for."""


class DatabaseUnreachable(PgBackupError, ConnectionError):
    """PostgreSQL refused or did not answer; the message names the connection and the server."""


class ToolNotFound(PgBackupError):
    """A PostgreSQL client program is not installed where we looked."""


class ToolFailed(PgBackupError):
    """A client program exited non-zero; the message carries the end of its stderr."""

    def __init__(self, tool: str, returncode: int, stderr: str, hint: str = ""):
        self.tool = tool
        self.returncode = returncode
        self.stderr = redact(stderr)
        self.hint = hint
        tail = "\n".join(self.stderr.strip().splitlines()[-40:]) or "(no output on stderr)"
        super().__init__(f"{tool} {describe_exit(returncode)}{hint}:\n{tail}")

    @property
    def summary(self) -> str:
        """The exit and the last error line of stderr."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()] or lines
        last = errors[-1] if errors else "(no output on stderr)"
        return redact(f"{self.tool} {describe_exit(self.returncode)}{self.hint}: {last}")


def describe_exit(returncode: int) -> str:
    """``exited with code 1`` or, for a negative return code, ``was killed by SIGKILL``."""
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


class StagedFileError(PgBackupError):
    """A staged file is missing or differs from what its producer recorded."""


class StagingNotShared(StagedFileError):
    """A stage cannot see a file its upstream wrote on another worker: staging is not shared.

    Retrying cannot fix it (it is the deployment's configuration), so tasks fail at once.
    """


class StorageError(PgBackupError):
    """The store refused, could not be reached, or holds something other than what we sent."""


class PreflightError(PgBackupError):
    """A precondition of the backup does not hold; the message says how to fix it."""


class SourceProtected(PgBackupError):
    """An action would create, restore into or drop the source database: refused."""


class RestoreError(PgBackupError):
    """The dump cannot be restored where we were asked to restore it."""


class VerificationFailed(PgBackupError):
    """The restored database differs from the snapshot; the message names every difference."""


class FollowOnFailure(VerificationFailed):
    """A set cannot be marked verified because an upstream task failed (and reported it)."""


class DumpError(PgBackupError):
    """The dump cannot prove what it read: a racing rewrite, a lock, hidden rows, lock budget."""


class DrillError(PgBackupError):
    """A drill or restore step failed; the message says which object or check and why."""


class SetUnavailable(DrillError):
    """A destination cannot give a set back: no manifest there, or an object fails its hash."""


class SweepRefused(PgBackupError):
    """The sweep will not delete anything: the listing or the plan looks wrong."""


class SweepIncomplete(PgBackupError):
    """The sweep went through every set and stored its report, but some deletes were refused."""


class StaleBackup(PgBackupError):
    """The newest verified backup is older than the freshness limit."""
