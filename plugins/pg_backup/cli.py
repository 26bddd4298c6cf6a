"""``pg-backup``: the command line for the day Airflow itself is down.

It reads the same config file and takes connections from ``AIRFLOW_CONN_*`` environment
variables (or a secrets backend configured for Airflow); it needs no Airflow component running.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path


def _keygen(args: argparse.Namespace) -> int:
    from pyrage import x25519

    identity = x25519.Identity.generate()
    public = str(identity.to_public())
    if args.output:
        path = Path(args.output)
        if path.exists():
            print(f"error: {path} exists; refusing to overwrite a private key", file=sys.stderr)
            return 2
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"# public key: {public}\n{identity}\n")
        print(f"private key written to {path} (mode 0600): store it in the identity connection "
              "and somewhere offline", file=sys.stderr)
    elif args.print_private:
        print(str(identity))
        print(f"# public key: {public}", file=sys.stderr)
        return 0
    else:
        # A public key whose private half is lost would make every backup unreadable.
        print("error: say where the private key goes: -o FILE or --print-private",
              file=sys.stderr)
        return 2
    print(public)
    return 0


def _check(args: argparse.Namespace) -> int:
    from pg_backup.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"FAIL config: {exc}")
        return 1
    print(f"ok   config {config.path}: targets {', '.join(sorted(config.targets))}")
    failures = 0
    for cfg in config.targets.values():
        if args.target and cfg.name not in args.target:
            continue
        for label, check in _target_checks(cfg):
            try:
                detail = check()
                print(f"ok   {cfg.name}: {label}{': ' + detail if detail else ''}")
            except Exception as exc:  # noqa: BLE001 - every failure becomes one readable line
                failures += 1
                print(f"FAIL {cfg.name}: {label}: {exc}")
    return 1 if failures else 0


def _target_checks(cfg: object) -> list[tuple[str, Callable[[], str]]]:
    from pg_backup import preflight, tools
    from pg_backup.config import TargetConfig
    from pg_backup.encrypt import parse_recipient
    from pg_backup.pgconn import endpoint
    from pg_backup.storage import open_storage

    assert isinstance(cfg, TargetConfig)

    def source() -> str:
        src = endpoint(cfg.source_conn_id)
        with src.connect(autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
        major, text = tools.tool_version(tools.tool_path("pg_dump", cfg.dump.pg_bin_dir))
        preflight.check_pg_dump(major, int(str(version).split(".")[0]))
        return f"{src.describe()} PostgreSQL {version}, {text}"

    def scratch() -> str:
        dst = endpoint(cfg.scratch_conn_id)
        preflight.check_not_source(dst, endpoint(cfg.source_conn_id))
        with dst.connect(autocommit=True):
            pass
        return dst.describe()

    def storage() -> str:
        store = open_storage(cfg.storage)
        store.check_writable(f"{cfg.name}/.preflight")
        return store.url

    def keys() -> str:
        for i, recipient in enumerate(cfg.encryption.recipients):
            parse_recipient(recipient, f"encryption.recipients[{i}]")
        return f"{len(cfg.encryption.recipients)} recipient(s)"

    return [
        (f"source connection {cfg.source_conn_id!r}", source),
        (f"scratch connection {cfg.scratch_conn_id!r}", scratch),
        ("storage writable", storage),
        ("encryption recipients", keys),
    ]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="pg-backup", description=__doc__)
    parser.add_argument("--config", help="config file (default: $PG_BACKUP_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="make an age key pair; prints the public key")
    keygen.add_argument("-o", "--output", help="write the private key to this new 0600 file")
    keygen.add_argument(
        "--print-private", action="store_true", help="print the private key to stdout instead"
    )
    keygen.set_defaults(func=_keygen)
    check = sub.add_parser("check", help="validate the config and every connection")
    check.add_argument("target", nargs="*", help="only these targets")
    check.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pg-backup`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
