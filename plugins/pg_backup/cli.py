"""``pg-backup``: the command line for the day Airflow itself is down.

It reads the same config file and takes connections from ``AIRFLOW_CONN_*`` environment
variables (or a secrets backend configured for Airflow); it needs no Airflow component running.
"""

from __future__ import annotations

import argparse
import os
import sys
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

    from pg_backup.core.config import load_config
    from pg_backup.core.errors import PgBackupError
    from pg_backup.stages.preflight import Preflight
    from pg_backup.stages.runtime import Runtime

    logging.getLogger("pg_backup").setLevel(logging.WARNING)  # one line per check, no stage logs

    try:
        config = load_config(args.config)
    except PgBackupError as exc:
        print(f"FAIL config: {exc.summary}")
        return 1
    print(f"ok   config {config.path}: targets {', '.join(sorted(config.targets))}")
    failures = 0
    for cfg in config.targets.values():
        if args.target and cfg.name not in args.target:
            continue
        # The daily DAG's own preflight, one check at a time (every failure is reported), then
        # what the weekly drill needs (its private key, its standby server).
        preflight = Preflight(Runtime(cfg))
        for label, check in preflight.checks() + preflight.drill_checks():
            try:
                detail = check()
                print(f"ok   {cfg.name}: {label}{': ' + detail if detail else ''}")
            except PgBackupError as exc:
                failures += 1
                print(f"FAIL {cfg.name}: {label}: {exc.summary}")
    return 1 if failures else 0


def _pools(args: argparse.Namespace) -> int:
    from pg_backup.adapters.pools import sync_pools
    from pg_backup.core.config import load_config
    from pg_backup.core.pools import plan_pools

    specs = plan_pools(load_config(args.config).targets.values())
    bad = 0
    for state in sync_pools(specs, check_only=args.check):
        spec = state.spec
        was = "" if state.found in (None, spec.slots) else f" (was {state.found})"
        if state.action in ("missing", "differs"):
            bad += 1
            was = " (absent)" if state.found is None else f" (has {state.found})"
        print(
            f"{state.action:<8} {spec.name}: {spec.slots} slot(s){was}, "
            f"targets {', '.join(spec.targets)}"
        )
    if bad:
        print(
            f"{bad} pool(s) missing or of another size: run `pg-backup pools` to create them "
            "(tasks in a missing pool are never scheduled)"
        )
    return 1 if bad else 0


def _load_target(args: argparse.Namespace) -> Any:
    from pg_backup.core.config import load_config

    return load_config(args.config).target(args.target)


def _list(args: argparse.Namespace) -> int:
    import json

    from pg_backup.adapters.catalog import inventory
    from pg_backup.adapters.storage import open_storage

    cfg = _load_target(args)
    if cfg.multi_destination:
        return _list_destinations(cfg)
    store = open_storage(cfg.storage)
    found = inventory(store, cfg.name, cfg.encryption.own_keys)
    drilled: dict[str, str] = {}
    for obj in sorted(store.list(f"{cfg.name}/drills/"), key=lambda o: o.key):
        try:
            items = json.loads(store.get_bytes(obj.key)).get("backups", [])
        except ValueError:
            continue  # not a drill report of ours
        for item in items:
            drilled[item["backup_id"]] = "passed" if item.get("ok") else "FAILED"
    print(
        f"{'backup id':<46} {'taken (UTC)':<17} {'kind':<9} {'MB':>9}  {'status':<10} "
        f"{'drilled':<8} note"
    )
    for s in sorted(found.sets, key=lambda s: s.taken_at, reverse=True):
        note = f"FOREIGN: {s.foreign}" if s.foreign else "; ".join(s.problems)
        print(
            f"{s.backup_id:<46} {s.taken_at[:16].replace('T', ' '):<17} {s.kind:<9} "
            f"{s.bytes / 1e6:>9.1f}  {s.status:<10} {drilled.get(s.backup_id, '-'):<8} {note}"
        )
    if found.stray:
        print(
            f"({len(found.stray)} object(s) under {cfg.name}/ were not written by pg_backup: "
            f"{', '.join(found.stray[:3])}{', ...' if len(found.stray) > 3 else ''})"
        )
    print(f"{len(found.sets)} set(s) in {store.url}")
    return 0


def _list_destinations(cfg: Any) -> int:
    """``pg-backup list`` of a target with several destinations: which of them hold each set."""
    from pg_backup.adapters.catalog import inventory
    from pg_backup.adapters.storage import open_storage
    from pg_backup.core.errors import PgBackupError

    sets: dict[str, Any] = {}
    held: dict[str, list[str]] = {}
    unreachable = 0
    for dest in cfg.destinations:
        try:
            found = inventory(open_storage(dest), cfg.name, cfg.encryption.own_keys)
        except PgBackupError as exc:
            unreachable += 1
            print(f"destination {dest.name} ({dest.url}): cannot be listed: {exc.summary}")
            continue
        for s in found.sets:
            sets.setdefault(s.backup_id, s)
            # A destination's own state of the set, when it is not the usual verified one.
            held.setdefault(s.backup_id, []).append(
                dest.name if s.status == "verified" else f"{dest.name}({s.status})"
            )
    print(f"{'backup id':<46} {'taken (UTC)':<17} {'kind':<9} {'MB':>9}  held by")
    for s in sorted(sets.values(), key=lambda s: s.taken_at, reverse=True):
        print(
            f"{s.backup_id:<46} {s.taken_at[:16].replace('T', ' '):<17} {s.kind:<9} "
            f"{s.bytes / 1e6:>9.1f}  {', '.join(held[s.backup_id])}"
        )
    names = ", ".join(d.name for d in cfg.destinations)
    print(f"{len(sets)} set(s) in {len(cfg.destinations)} destination(s): {names}")
    return 1 if unreachable else 0


def _catalog(args: argparse.Namespace) -> int:
    """Show the target's catalog index (what the Backups page reads), or rebuild it."""
    from pg_backup.adapters import catalog_index
    from pg_backup.adapters.storage import open_storage
    from pg_backup.core.layout import catalog_key

    cfg = _load_target(args)
    store = open_storage(cfg.storage)
    index = (
        catalog_index.rebuild(store, cfg.name, cfg.encryption.own_keys)
        if args.rebuild
        else catalog_index.read_index(store, cfg.name)
    )
    if index is None:
        print(f"no catalog index for {cfg.name} in {store.url}: run with --rebuild")
        return 1
    if args.json:
        print(index.to_bytes().decode())
        return 0
    for s in index.sets:
        fate = s.retention and ("kept" if s.retention.keep else "deleted")
        print(
            f"{s.backup_id:<46} {s.status:<10} drill {s.drill.outcome if s.drill else '-':<6} "
            f"sweep {fate or '-'}"
        )
    print(
        f"{len(index.sets)} set(s); index rebuilt {index.built_at[:19]}, updated "
        f"{index.updated_at[:19]} (UTC), {store.describe(catalog_key(cfg.name))}"
    )
    return 0


def _runtime(args: argparse.Namespace, cfg: Any) -> Any:
    """The target's resources; the private keys from ``--identity`` when given."""
    from pg_backup.core.errors import ConfigError
    from pg_backup.core.keys import split_identities
    from pg_backup.stages.runtime import Runtime

    if not args.identity:
        return Runtime(cfg)
    try:
        found = split_identities(Path(args.identity).read_text())
    except OSError as exc:
        raise ConfigError(f"--identity {args.identity}: {exc.strerror}") from None
    if not found:
        raise ConfigError(f"--identity {args.identity} holds no AGE-SECRET-KEY-1... line")
    return Runtime(cfg, identities=found)


def _say(line: str) -> None:
    print(line, flush=True)


def _verify(args: argparse.Namespace) -> int:
    import tempfile

    from pg_backup.stages.destinations import from_destinations
    from pg_backup.stages.retrieve import open_set

    cfg = _load_target(args)
    rt = _runtime(args, cfg)
    with tempfile.TemporaryDirectory(prefix="pg-backup-verify-") as tmp:
        used, (manifest, _, _) = from_destinations(
            cfg,
            args.backup_id,
            lambda store: open_set(store, cfg.name, args.backup_id, rt.identities, Path(tmp), _say),
            args.from_destination,
            _say,
        )
    where = f" in destination {used}" if cfg.multi_destination else ""
    print(f"ok: {manifest.backup_id} is intact{where} and decrypts (no restore done)")
    return 0


def _restore_target(args: argparse.Namespace) -> Any:
    from pg_backup.adapters.pgconn import LIBPQ_EXTRAS, PgEndpoint, endpoint
    from pg_backup.core.errors import ConfigError

    into = args.into
    if "=" not in into and "://" not in into:
        return endpoint(into)
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        fields = {k: str(v) for k, v in conninfo_to_dict(into).items() if v is not None}
    except ProgrammingError:
        raise ConfigError(
            "--into is not a libpq connection string: write it like "
            "'host=db.example.org dbname=restored' (the password goes in PGPASSWORD)"
        ) from None
    if not fields.get("dbname"):
        raise ConfigError("--into names no database: add dbname=... to it")
    options: dict[str, str] = {k: fields[k] for k in LIBPQ_EXTRAS if k in fields}
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


def _source_or_none(rt: Any) -> Any:
    """The source endpoint, or None when its connection is not defined (the worst day)."""
    from pg_backup.core.errors import ConnectionConfigError

    try:
        return rt.source
    except ConnectionConfigError:
        return None


def _restore(args: argparse.Namespace) -> int:
    import tempfile

    from pg_backup.adapters.databases import Databases
    from pg_backup.core.errors import RestoreError
    from pg_backup.stages import retrieve
    from pg_backup.stages.destinations import from_destinations

    cfg = _load_target(args)
    rt = _runtime(args, cfg)
    target = _restore_target(args)
    # The set's manifest records which database it came from: with the source connection down
    # or undefined, that still tells the source apart.
    _, manifest = from_destinations(
        cfg,
        args.backup_id,
        lambda store: retrieve.load_manifest(store, cfg.name, args.backup_id),
        args.from_destination,
        _say,
    )
    recorded = manifest.source
    databases = Databases(target.with_db("postgres"), _source_or_none(rt), recorded)
    databases.guard(target.dbname)
    if databases.exists(target.dbname) and not args.force:
        relations = databases.user_relations(target.dbname)
        if relations:
            raise RestoreError(
                f"database {target.describe()} exists and holds {relations} relation(s); "
                "restore into a new or empty database, or pass --force to drop and recreate it"
            )
    with tempfile.TemporaryDirectory(prefix="pg-backup-restore-") as tmp:
        used, done = from_destinations(
            cfg,
            args.backup_id,
            lambda store: retrieve.restore_from_storage(
                store,
                cfg,
                args.backup_id,
                rt.identities,
                databases,
                target,
                Path(tmp),
                args.jobs,
                roles=args.roles,
                say=_say,
            ),
            args.from_destination,
            _say,
        )
    if cfg.multi_destination:
        print(f"from      destination {used}")
    _report_restore(done)
    return 0 if done.ok else 1


def _report_restore(done: Any) -> None:
    """The end of ``pg-backup restore``: what came back as it was, and what did not."""
    if done.made:
        made = done.made
        print(f"roles     created: {', '.join(made.created) or 'none'}")
        if made.existing:
            print(f"          existed, left as they are: {', '.join(made.existing)}")
        if made.need_password:
            print(
                f"          need a password before they can log in (none is restored): "
                f"{', '.join(made.need_password)} (ALTER ROLE <name> PASSWORD '...')"
            )
        for role, dropped in made.reduced.items():
            print(f"          {role} created without {' '.join(dropped)}: only a superuser may")
        if made.granted_to_login:
            print(f"          granted to the restoring login: {', '.join(made.granted_to_login)}")
    if done.settings_applied or done.settings_failed:
        print(
            f"settings  {done.settings_applied} statement(s) applied: the database's settings, "
            + ("comment, owner and grants" if done.roles else "comment")
        )
    for failed in done.settings_failed:
        print(f"NOT applied: {failed}")
    for skipped in done.skipped:
        print(f"not restored: {skipped}")
    if not done.roles:
        what = (
            f"owners and grants of {done.not_restored} objects not restored"
            if done.not_restored is not None
            else "owners and grants not restored (this set records no roles)"
        )
        print(f"NOTE      {what}; rerun with --roles (and --force) to restore them")
    if done.differences:
        print("\n".join(done.differences))
        print(f"FAILED: the restore differs from the snapshot of {done.snapshot_at}")
        return
    print(f"verified  {done.proof} (snapshot of {done.snapshot_at})")
    for line in done.as_it_was:
        print(f"DIFFERS   {line}")
    for line in done.notes:
        print(f"note      {line}")
    if done.compared and not done.as_it_was:
        kept = "locale, settings" + (", roles, owners and grants" if done.roles else "")
        print(f"as it was: {kept} equal the source's")
    if done.ok:
        print(f"done: {done.backup_id} restored into {done.database} in {done.seconds:.1f} s")
    else:
        print(f"FAILED: {done.backup_id} restored into {done.database}, but not as it was")


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
    pools = sub.add_parser(
        "pools", help="create the Airflow pools per source and scratch server (or --check them)"
    )
    pools.add_argument("--check", action="store_true", help="change nothing; exit 1 if any differ")
    pools.set_defaults(func=_pools)
    listing = sub.add_parser("list", help="backup sets of a target, newest first")
    listing.add_argument("target")
    listing.set_defaults(func=_list)
    catalog = sub.add_parser("catalog", help="the catalog index the Backups page reads")
    catalog.add_argument("target")
    catalog.add_argument("--rebuild", action="store_true", help="rebuild it from storage now")
    catalog.add_argument("--json", action="store_true", help="print the index document")
    catalog.set_defaults(func=_catalog)
    for name, func, text in (
        ("verify", _verify, "download, check the hash, decrypt and decompress (no restore)"),
        ("restore", _restore, "restore a set into a new or empty database, then check counts"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("target")
        cmd.add_argument("backup_id")
        cmd.add_argument("--identity", help="age key file (default: the identity connection)")
        cmd.add_argument(
            "--from",
            dest="from_destination",
            metavar="NAME",
            help="only this destination (default: the first that holds the set intact, "
            "falling back to the next)",
        )
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
            cmd.add_argument(
                "--roles",
                action="store_true",
                help="create the roles the database needs that the server lacks (never altering "
                "one that exists; no passwords), and restore owners and grants",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pg-backup`` console script.

    Exit codes: 0 done, 1 a check or verification failed, 2 an error an operator can fix (one
    line on stderr naming the problem and the fix, no traceback).
    """
    from pg_backup.core.errors import PgBackupError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PgBackupError as exc:
        print(f"error: {exc.summary}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
