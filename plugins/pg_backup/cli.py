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
from typing import Any


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
        print(
            f"private key written to {path} (mode 0600): store it in the identity connection "
            "and somewhere offline",
            file=sys.stderr,
        )
    elif args.print_private:
        print(str(identity))
        print(f"# public key: {public}", file=sys.stderr)
        return 0
    else:
        # A public key whose private half is lost would make every backup unreadable.
        print("error: say where the private key goes: -o FILE or --print-private", file=sys.stderr)
        return 2
    print(public)
    return 0


def _check(args: argparse.Namespace) -> int:
    import logging

    from pg_backup.config import ConfigError, load_config

    logging.getLogger("pg_backup").setLevel(logging.WARNING)  # one line per check, no stage logs

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
            row = conn.execute("SHOW server_version").fetchone()
        version = row[0] if row else "?"
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

    def full_preflight() -> str:
        # The daily DAG's own first task: adds CREATEDB on scratch and staging free space.
        result = preflight.run_preflight(cfg)
        return (
            f"source data about {result.estimated_bytes / 1e6:,.0f} MB, staging free "
            f"{result.staging_free_bytes / 1e9:,.1f} GB"
        )

    return [
        (f"source connection {cfg.source_conn_id!r}", source),
        (f"scratch connection {cfg.scratch_conn_id!r}", scratch),
        ("storage writable", storage),
        ("encryption recipients", keys),
        ("preflight of the daily DAG", full_preflight),
    ]


def _load_target(args: argparse.Namespace) -> Any:
    from pg_backup.config import load_config

    return load_config(args.config).target(args.target)


def _list(args: argparse.Namespace) -> int:
    import json

    from pg_backup.storage import open_storage
    from pg_backup.sweep import inventory

    cfg = _load_target(args)
    store = open_storage(cfg.storage)
    found = inventory(store, cfg.name)
    drilled: dict[str, str] = {}
    for obj in sorted(store.list(f"{cfg.name}/drills/"), key=lambda o: o.key):
        for item in json.loads(store.get_bytes(obj.key)).get("backups", []):
            drilled[item["backup_id"]] = "passed" if item.get("ok") else "FAILED"
    print(f"{'backup id':<46} {'taken (UTC)':<17} {'kind':<9} {'MB':>9}  {'status':<10} drilled")
    for s in sorted(found.sets, key=lambda s: s.taken_at, reverse=True):
        print(
            f"{s.backup_id:<46} {s.taken_at[:16].replace('T', ' '):<17} {s.kind:<9} "
            f"{s.bytes / 1e6:>9.1f}  {s.status:<10} {drilled.get(s.backup_id, '-')}"
        )
    if found.stray:
        print(f"({len(found.stray)} object(s) under {cfg.name}/ are not part of any set)")
    print(f"{len(found.sets)} set(s) in {store.url}")
    return 0


def _identities(args: argparse.Namespace, cfg: Any) -> list[str]:
    from pg_backup.drill import DrillError, identities_from_connection, split_identities

    if args.identity:
        keys = split_identities(Path(args.identity).read_text())
        if not keys:
            raise DrillError(f"{args.identity} holds no AGE-SECRET-KEY-1... line")
        return keys
    return identities_from_connection(cfg.encryption.identity_conn_id)


def _fetch_and_open(args: argparse.Namespace, cfg: Any, work: Path) -> tuple[Any, dict[str, Any]]:
    """Fetch, hash-check, decrypt and decompress one set into ``work``."""
    import time

    from pg_backup.drill import decompress_set, decrypt_set, fetch_set, load_manifest
    from pg_backup.storage import open_storage

    store = open_storage(cfg.storage)
    manifest = load_manifest(store, cfg.name, args.backup_id)
    started = time.monotonic()
    fetched = fetch_set(store, manifest, work)
    print(
        f"fetched   {manifest.data.bytes / 1e6:,.1f} MB, sha256 matches the manifest "
        f"({fetched['seconds']:.1f} s)",
        flush=True,
    )
    decrypted = decrypt_set(work, fetched, _identities(args, cfg), manifest)
    print(f"decrypted with the private key ({decrypted['seconds']:.1f} s)", flush=True)
    opened = decompress_set(work, decrypted)
    print(
        f"decompressed {manifest.dump_bytes / 1e6:,.1f} MB dump ({opened['seconds']:.1f} s, "
        f"{time.monotonic() - started:.1f} s so far)",
        flush=True,
    )
    return manifest, {"decrypted": decrypted, "opened": opened}


def _verify(args: argparse.Namespace) -> int:
    import tempfile

    cfg = _load_target(args)
    with tempfile.TemporaryDirectory(prefix="pg-backup-verify-") as tmp:
        manifest, _ = _fetch_and_open(args, cfg, Path(tmp))
    print(f"ok: {manifest.backup_id} is intact and decrypts (no restore done)")
    return 0


def _restore_target(args: argparse.Namespace, cfg: Any) -> Any:
    from pg_backup.pgconn import PgEndpoint, endpoint

    into = args.into
    if "=" in into or "://" in into:
        from psycopg.conninfo import conninfo_to_dict

        fields = {k: str(v) for k, v in conninfo_to_dict(into).items() if v is not None}
        if not fields.get("dbname"):
            raise SystemExit("error: --into names no database (dbname=...)")
        options: dict[str, str] = {k: fields[k] for k in ("sslmode", "sslrootcert") if k in fields}
        return PgEndpoint(
            conn_id="--into",
            host=fields.get("host", ""),
            port=int(fields.get("port", 5432)),
            user=fields.get("user") or os.environ.get("USER", ""),
            dbname=fields["dbname"],
            # Children get a scrubbed libpq environment, so an operator's PGPASSWORD is carried
            # over explicitly (still through the environment, never argv).
            password=fields.get("password") or os.environ.get("PGPASSWORD"),
            options=options,
        )
    return endpoint(into)


def _restore(args: argparse.Namespace) -> int:
    import tempfile
    import time

    from pg_backup.drill import expected_counts
    from pg_backup.pgconn import endpoint
    from pg_backup.restore import create_database, refuse_source, restore_dump
    from pg_backup.verify import compare_database, format_differences

    cfg = _load_target(args)
    target = _restore_target(args, cfg)
    try:
        source = endpoint(cfg.source_conn_id)
    except Exception:  # noqa: BLE001 - the source connection may be gone on the worst day
        source = None
    if source is not None:
        refuse_source(target.with_db("postgres"), source, target.dbname)
    server = target.with_db("postgres")
    with server.connect(autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (target.dbname,)
        ).fetchone()
    if exists:
        with target.connect(autocommit=True) as conn:
            relations = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p', 'm', 'v', 'S') AND n.nspname NOT LIKE 'pg\\_%%' "
                "AND n.nspname <> 'information_schema'"
            ).fetchone()[0]
        if relations and not args.force:
            print(
                f"error: database {target.describe()} exists and holds {relations} relation(s); "
                "restore into a new or empty database, or pass --force to drop and recreate it",
                file=sys.stderr,
            )
            return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pg-backup-restore-") as tmp:
        work = Path(tmp)
        manifest, opened = _fetch_and_open(args, cfg, work)
        if not exists or args.force:
            create_database(server, target.dbname)
            print(f"created   database {target.describe()}", flush=True)
        # db.dump: a custom-format file, or a packed directory dump restore_dump unpacks.
        dump_name = opened["opened"]["dump"]["name"]
        seconds = restore_dump(target, str(work / dump_name), args.jobs, cfg.dump.pg_bin_dir)
        print(f"restored  with pg_restore -j {args.jobs} ({seconds:.1f} s)", flush=True)
        expected = expected_counts(work, opened["decrypted"])
    result = compare_database(target, expected, cfg.dump.schemas, cfg.dump.exclude_schemas)
    total = time.monotonic() - started
    if not result.ok:
        print(format_differences(result.differences))
        print(f"FAILED: {len(result.differences)} relation(s) differ from the snapshot")
        return 1
    print(
        f"verified  {result.checked} relations, {result.rows:,} rows exactly as in the snapshot "
        f"of {manifest.snapshot_at}"
    )
    print(f"done: {manifest.backup_id} restored into {target.describe()} in {total:.1f} s")
    return 0


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
    listing = sub.add_parser("list", help="backup sets of a target, newest first")
    listing.add_argument("target")
    listing.set_defaults(func=_list)
    for name, func, text in (
        ("verify", _verify, "download, check the hash, decrypt and decompress (no restore)"),
        ("restore", _restore, "restore a set into a new or empty database, then check counts"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("target")
        cmd.add_argument("backup_id")
        cmd.add_argument("--identity", help="age key file (default: the identity connection)")
        cmd.set_defaults(func=func)
        if name == "restore":
            cmd.add_argument(
                "--into",
                required=True,
                help="libpq DSN or Airflow connection id of the database to create",
            )
            cmd.add_argument(
                "--force",
                action="store_true",
                help="drop and recreate the database if it exists and is not empty",
            )
            cmd.add_argument("--jobs", type=int, default=2, help="pg_restore -j (default 2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pg-backup`` console script."""
    from pg_backup.config import ConfigError
    from pg_backup.drill import DrillError
    from pg_backup.pgconn import ConnectionConfigError
    from pg_backup.restore import RestoreError
    from pg_backup.storage import StorageError
    from pg_backup.tools import ToolFailed

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (
        ConfigError,
        DrillError,
        ConnectionConfigError,
        ConnectionError,
        RestoreError,
        StorageError,
        ToolFailed,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
