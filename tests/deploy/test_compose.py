"""docker-compose.yaml, checked without Docker: schema, pins, variables, connections, mounts.

The file is read the way Compose reads it (``.env.example`` supplies the variables) by the helpers
in ``composefile.py``; nothing here needs a Docker engine or the network.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.composefile import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    REPO,
    SCHEMA,
    InterpolationError,
    interpolate,
    load,
    load_raw,
    mounts,
    read_env_file,
    references,
    resolve,
)

AIRFLOW_SH = REPO / "deploy" / "airflow.sh"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "Dockerfile.dockerignore"
COMPOSE_DIR = REPO / "deploy" / "compose"
CONFIG = COMPOSE_DIR / "pg_backup.yaml"
SEED_SCRIPT = COMPOSE_DIR / "seed-source.sh"
S3_INIT_SCRIPT = COMPOSE_DIR / "s3-init.sh"
POLICIES = {
    "writer": COMPOSE_DIR / "s3-writer-policy.json",
    "sweeper": COMPOSE_DIR / "s3-sweeper-policy.json",
}
SCHEMA_SHA256 = "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"
PLACEHOLDER = "age1replacewithyourpublickeyxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"

# Service -> the deploy/airflow.sh component it runs.
WORKERS = ("airflow-worker-1", "airflow-worker-2")  # profile celery
AIRFLOW_SERVICES = {
    "airflow-init": "init",
    "airflow-api-server": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
CLI_SERVICE = "pg-backup"
SCRIPT_IN_CONTAINER = "/opt/pg_backup/deploy/airflow.sh"
# Tags that name one release: 17.6, 16.10, v1.22.3, RELEASE.2025-04-22T22-12-26Z (+ a variant).
PINNED_TAG = re.compile(
    r"^(\d+\.\d+(\.\d+)?|v\d+\.\d+\.\d+|RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)(-[a-z0-9.]+)?$"
)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET")
REAL_SECRETS = re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]{20,}|AKIA[0-9A-Z]{16}|AVNS_[A-Za-z0-9]{8,}")


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load_raw()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return {name: entry.value for name, entry in read_env_file().items()}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The compose config, with a freshly generated public key in place of the placeholder.

    After README's step 2 the file holds the operator's own key instead: it is loaded as it is.
    """
    from pyrage import x25519

    from pg_backup.core.config import load_config

    text = CONFIG.read_text()
    if PLACEHOLDER not in text:
        return load_config(CONFIG)
    assert text.count(PLACEHOLDER) == 1, f"{CONFIG} should hold the recipient placeholder once"
    public = str(x25519.Identity.generate().to_public())
    path = tmp_path_factory.mktemp("compose-config") / "pg_backup.yaml"
    path.write_text(text.replace(PLACEHOLDER, public))
    return load_config(path)


def airflow_env(compose: dict[str, Any], service: str = "airflow-scheduler") -> dict[str, str]:
    return compose["services"][service]["environment"]


def conn_var(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def conn_ids(cfg: Any) -> dict[str, str]:
    """Every connection id a target reads, by role."""
    ids = {
        "source": cfg.source_conn_id,
        "scratch": cfg.scratch_conn_id,
        "s3_writer": cfg.storage.aws_conn_id,
        "smtp": cfg.alerts.smtp_conn_id,
        "identity": cfg.encryption.identity_conn_id,
    }
    if cfg.storage.sweep_aws_conn_id:
        ids["s3_sweeper"] = cfg.storage.sweep_aws_conn_id
    return ids


def parse_connection(conn_id: str, value: str) -> Any:
    from airflow.models.connection import Connection

    if value.lstrip().startswith("{"):
        return Connection.from_json(value, conn_id=conn_id)
    return Connection(conn_id=conn_id, uri=value)


# --- the file as a whole -----------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification(
    raw: dict[str, Any], compose: dict[str, Any]
) -> None:
    """docker-compose.yaml validates against the Compose Specification's JSON schema."""
    import jsonschema

    if not SCHEMA.is_file():
        pytest.fail(
            f"the Compose Specification schema is missing: expected {SCHEMA} (vendored "
            "copy of compose-spec/compose-spec schema/compose-spec.json, see "
            "tests/deploy/compose-spec.NOTICE.md)"
        )
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256, (
        f"{SCHEMA.name} changed: record its new sha256 in compose-spec.NOTICE.md and here"
    )
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    for label, document in (("as written", raw), ("interpolated with .env.example", compose)):
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)
        ]
        assert not errors, f"docker-compose.yaml ({label}) breaks the spec:\n" + "\n".join(errors)
    # The schema is strict enough to catch a misspelt key (so passing means something).
    broken = copy.deepcopy(raw)
    broken["services"]["airflow-scheduler"]["healthchek"] = {}
    assert list(validator.iter_errors(broken))


def test_env_example_provides_every_variable_and_nothing_else(
    raw: dict[str, Any], env_example: dict[str, str]
) -> None:
    """Every variable docker-compose.yaml interpolates is in .env.example, and each one is used."""
    used = references(raw)
    assert sorted(used - env_example.keys()) == [], "add these to .env.example"
    assert sorted(env_example.keys() - used) == [], "unused in docker-compose.yaml: remove them"
    # Without .env, compose stops with a message instead of starting half-configured services.
    with pytest.raises(InterpolationError, match="copy .env.example to .env"):
        interpolate(raw, {})


def test_env_example_marks_every_throwaway_secret() -> None:
    """Sample passwords and keys are marked THROWAWAY; no real secret is in the file."""
    text = ENV_EXAMPLE.read_text()
    assert not REAL_SECRETS.search(text), "a real-looking key is in .env.example"
    for entry in read_env_file().values():
        carries_password = entry.name.startswith("AIRFLOW_CONN_") and '"password"' in entry.value
        if SECRET_NAME.search(entry.name):
            # The value says so itself, or (a Fernet key cannot) the comment right above it.
            assert entry.value.startswith("throwaway-") or "THROWAWAY" in entry.comment, (
                f"{entry.name}: start the sample value with throwaway- or mark it THROWAWAY"
            )
        if carries_password and not entry.name.endswith("AGE_IDENTITY"):
            password = json.loads(entry.value)["password"]
            assert password.startswith("throwaway-"), f"{entry.name}: throwaway- password"


# --- images ------------------------------------------------------------------------------------


def test_every_image_is_pinned(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    """Every image names one release; the Airflow image is built from a pinned official image."""
    dockerfile = DOCKERFILE.read_text()
    base = re.search(r"^ARG AIRFLOW_IMAGE=(\S+)$", dockerfile, re.M)
    assert base and re.fullmatch(r"apache/airflow:3\.3\.\d+-python3\.11", base[1]), base
    assert re.search(r"^FROM \$\{AIRFLOW_IMAGE\}$", dockerfile, re.M)
    majors = {}
    for name, service in compose["services"].items():
        image = service.get("image", "")
        if "build" in service:
            assert "AIRFLOW_IMAGE" not in service["build"].get("args", {}), name
            assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
            assert "/" not in image.split(":")[0], f"{name}: a local name, never pulled"
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and PINNED_TAG.match(tag), f"{name}: pin {image!r} to one release"
        if repository == "postgres":
            majors[name] = int(tag.split(".")[0])
    client = int(env_example["PG_CLIENT_MAJOR"])
    assert client >= majors["source-db"], "pg_dump must be at least the source's major version"
    assert majors["scratch-db"] >= majors["source-db"], "restores need a scratch server as new"


def test_dockerfile_adds_the_pgdg_client_and_the_package(
    raw: dict[str, Any], env_example: dict[str, str]
) -> None:
    """The image gets PostgreSQL's own client (build arg, default 17) and pip -c constraints.txt."""
    dockerfile = DOCKERFILE.read_text()
    default = re.search(r"^ARG PG_MAJOR=(\d+)$", dockerfile, re.M)
    assert default and default[1] == env_example["PG_CLIENT_MAJOR"] == "17"
    build_arg = raw["x-airflow-common"]["build"]["args"]["PG_MAJOR"]
    assert build_arg == "${PG_CLIENT_MAJOR:-17}"
    assert "https://apt.postgresql.org/pub/repos/apt" in dockerfile
    assert '"postgresql-client-${PG_MAJOR}"' in dockerfile
    assert re.search(r"pip install .*-c /opt/pg_backup/src/constraints\.txt", dockerfile)
    # Every COPY source passes deploy/Dockerfile.dockerignore (which excludes everything else).
    allowed = {line[1:] for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", dockerfile, re.M):
        for source in line.split()[:-1]:
            assert source in allowed, f"COPY {source}: re-include it in {DOCKERIGNORE.name}"
            assert (REPO / source).exists(), source


# --- commands: one source of truth -------------------------------------------------------------


def test_airflow_services_run_deploy_airflow_sh(compose: dict[str, Any]) -> None:
    """Each Airflow service runs `deploy/airflow.sh <component>`, the script `make airflow` runs."""
    from pg_backup import demo

    script = AIRFLOW_SH.read_text()
    started_by_all = re.search(r"for name in ([a-z\- ]+); do", script)
    assert started_by_all, "airflow.sh all no longer lists its components"
    assert set(AIRFLOW_SERVICES.values()) == {"init", *started_by_all[1].split()}
    source = inspect.getsource(demo.airflow)
    assert '"airflow.sh"' in source and '"all"' in source, "make airflow must run airflow.sh all"
    services = compose["services"]
    for name, component in AIRFLOW_SERVICES.items():
        service = services[name]
        assert service["command"] == ["bash", SCRIPT_IN_CONTAINER, component], name
        # The image's own entrypoint hands `bash ...` through after its checks.
        assert "entrypoint" not in service, name
        mount, inside = resolve(service, SCRIPT_IN_CONTAINER)
        assert mount.is_bind and mount.host_path / inside == AIRFLOW_SH, name
    assert services[CLI_SERVICE]["entrypoint"][-1] == "pg-backup"


def test_scripts_parse_and_one_shots_read_their_files(compose: dict[str, Any]) -> None:
    """The init scripts are valid shell and reach the files they read through their mounts."""
    for shell, path in (("bash", AIRFLOW_SH), ("bash", SEED_SCRIPT), ("sh", S3_INIT_SCRIPT)):
        subprocess.run([shell, "-n", str(path)], check=True)
    seed = compose["services"]["source-seed"]
    mount, inside = resolve(seed, seed["command"][1])
    assert mount.host_path / inside == SEED_SCRIPT
    s3_init = compose["services"]["s3-init"]
    mount, inside = resolve(s3_init, s3_init["entrypoint"][1])
    assert mount.host_path / inside == S3_INIT_SCRIPT
    # s3-init.sh reads the policies beside itself ("$here/s3-<role>-policy.json").
    assert '"$here/s3-${2#pg-backup-}-policy.json"' in S3_INIT_SCRIPT.read_text()
    for role, path in POLICIES.items():
        assert path == mount.host_path / f"s3-{role}-policy.json"


# --- configuration, variables, connections -------------------------------------------------------


def test_compose_config_validates_once_the_key_is_set(config: Any) -> None:
    """deploy/compose/pg_backup.yaml loads with a real key; as shipped only the key is wrong."""
    from pg_backup.core.config import ConfigError, load_config

    assert set(config.targets) == {"voting"}
    if PLACEHOLDER not in CONFIG.read_text():
        return  # the operator's key is in (README step 2): the fixture loaded the file as it is
    with pytest.raises(ConfigError) as shipped:
        load_config(CONFIG)
    problems = str(shipped.value).splitlines()[1:]
    assert len(problems) == 1 and "encryption.recipients[0]" in problems[0], problems


def test_airflow_services_get_every_variable_the_package_reads(
    compose: dict[str, Any], config: Any
) -> None:
    """Config path, airflow.sh's required variables and every config connection are provided."""
    from pg_backup.core.config import CONFIG_ENV

    envs = {name: airflow_env(compose, name) for name in AIRFLOW_SERVICES}
    first = next(iter(envs.values()))
    assert all(env == first for env in envs.values()), "Airflow services must share one env"
    required = set(re.findall(r"\$\{([A-Z_]+):\?", AIRFLOW_SH.read_text()))
    needed = {CONFIG_ENV, *required, "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"}
    for cfg in config.targets.values():
        needed |= {conn_var(i) for i in conn_ids(cfg).values()}
    missing = sorted(n for n in needed if not first.get(n))
    assert missing == [], f"not provided to the Airflow services: {missing}"
    assert first["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert "CeleryExecutor" in COMPOSE_FILE.read_text(), "keep the note on switching to Celery"
    # Tasks reach the api-server's execution API; every login comes from airflow.sh init.
    api = urlsplit(first["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert api.hostname == "airflow-api-server" and str(api.port) == first["PG_BACKUP_API_PORT"]
    published = compose["services"]["airflow-api-server"]["ports"][0]
    assert published.endswith(f":{first['PG_BACKUP_API_PORT']}")
    users = first["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
    assert users == f"{first['PG_BACKUP_UI_USER']}:admin"
    metadata = urlsplit(first["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    metadata_env = compose["services"]["metadata-db"]["environment"]
    assert metadata.hostname == "metadata-db"
    assert metadata.password == metadata_env["POSTGRES_PASSWORD"]


def test_connections_parse_as_airflow_connections(
    compose: dict[str, Any], config: Any, env_example: dict[str, str]
) -> None:
    """Every AIRFLOW_CONN_* parses with Airflow's Connection and points at the right service."""
    from pg_backup.adapters.pgconn import endpoint_from_connection

    services = compose["services"]
    env = {**airflow_env(compose), **services[CLI_SERVICE]["environment"]}
    conns = {
        k.removeprefix("AIRFLOW_CONN_").lower(): v
        for k, v in env.items()
        if k.startswith("AIRFLOW_CONN_")
    }
    parsed = {conn_id: parse_connection(conn_id, value) for conn_id, value in conns.items()}
    cfg = config.target("voting")
    ids = conn_ids(cfg)
    expected_type = {
        "source": "postgres",
        "scratch": "postgres",
        "s3_writer": "aws",
        "s3_sweeper": "aws",
        "smtp": "smtp",
        "identity": "generic",
    }
    for role, conn_id in ids.items():
        assert parsed[conn_id].conn_type == expected_type[role], (role, conn_id)
    assert sorted(set(conns) - set(ids.values())) == ["pg_backup_restore_target"]

    # PostgreSQL: usable by pg_backup, the sample logins and passwords of the sample servers.
    source = endpoint_from_connection(parsed[ids["source"]])
    scratch = endpoint_from_connection(parsed[ids["scratch"]])
    restore = endpoint_from_connection(parsed["pg_backup_restore_target"])
    # Offline, only the spelling can be compared; preflight asks the servers themselves.
    assert not scratch.same_database_as(source)
    assert (scratch.host, source.host) == ("scratch-db", "source-db")
    seed = SEED_SCRIPT.read_text()
    assert source.host == "source-db"
    assert f"db=${{SAMPLE_DB:-{source.dbname}}}" in seed
    assert f"login=${{BACKUP_LOGIN:-{source.user}}}" in seed
    assert source.password == env_example["SOURCE_BACKUP_PASSWORD"]
    scratch_env = services["scratch-db"]["environment"]
    for target in (scratch, restore):
        assert (target.host, target.user) == ("scratch-db", scratch_env["POSTGRES_USER"])
        assert target.password == scratch_env["POSTGRES_PASSWORD"]
    assert scratch.dbname == scratch_env["POSTGRES_DB"]

    # S3: the s3 service, path-style, the users and passwords s3-init creates.
    s3_init = S3_INIT_SCRIPT.read_text()
    for role, variable in (
        ("s3_writer", "S3_WRITER_PASSWORD"),
        ("s3_sweeper", "S3_SWEEPER_PASSWORD"),
    ):
        conn = parsed[ids[role]]
        extra = conn.extra_dejson
        assert urlsplit(extra["endpoint_url"]).hostname == "s3", role
        assert extra["config_kwargs"]["s3"]["addressing_style"] == "path"
        assert f'add_user {conn.login} pg-backup-{role[3:]} "${{{variable}:?' in s3_init, role
        assert conn.password == env_example[variable]

    # SMTP: the mailpit sink; the identity connection holds no key in the example.
    smtp = parsed[ids["smtp"]]
    assert (smtp.host, smtp.port) == ("mailpit", 1025)
    assert not REAL_SECRETS.search(parsed[ids["identity"]].password or "")


def test_mounts_and_staging_volume_match_the_config(compose: dict[str, Any], config: Any) -> None:
    """Config file, dags, plugins, staging and logs are mounted where the settings say."""
    services = compose["services"]
    declared = set(compose["volumes"])
    for name in [*AIRFLOW_SERVICES, CLI_SERVICE]:
        service, env = services[name], services[name]["environment"]
        mount, inside = resolve(service, env["PG_BACKUP_CONFIG"])
        assert mount.host_path / inside == CONFIG, f"{name}: PG_BACKUP_CONFIG is not {CONFIG}"
        for variable, folder in (
            ("AIRFLOW__CORE__DAGS_FOLDER", "dags"),
            ("AIRFLOW__CORE__PLUGINS_FOLDER", "plugins"),
            ("PYTHONPATH", "plugins"),
        ):
            mount, inside = resolve(service, env[variable])
            assert mount.is_bind and mount.read_only and mount.host_path / inside == REPO / folder
        for cfg in config.targets.values():
            mount, _ = resolve(service, cfg.staging_dir)
            assert mount.source == "pg-backup-staging" and mount.source in declared, name
        for path in (
            f"{env['AIRFLOW_HOME']}/logs",
            env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"],
        ):
            mount, _ = resolve(service, path)
            assert not mount.is_bind and mount.source in declared, (name, path)
    # The staging volume is mounted by every Airflow service (any of them may run a task).
    for name in AIRFLOW_SERVICES:
        assert "pg-backup-staging" in {m.source for m in mounts(services[name])}
    # Storage: the bucket s3-init creates.
    bucket = re.search(r"^bucket=(\S+)$", S3_INIT_SCRIPT.read_text(), re.M)
    for cfg in config.targets.values():
        assert bucket and cfg.storage.url.split("/")[2] == bucket[1]


def test_healthchecks_guard_every_dependency(raw: dict[str, Any]) -> None:
    """Long-running services have healthchecks; dependents wait for healthy or completed."""
    services = raw["services"]
    one_shot = {n for n, s in services.items() if s.get("restart") == "no"}
    for name, service in services.items():
        if name not in one_shot:
            assert service.get("healthcheck", {}).get("test"), f"{name}: add a healthcheck"
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use depends_on with conditions"
        for dependency, rule in depends.items():
            wanted = (
                "service_completed_successfully" if dependency in one_shot else "service_healthy"
            )
            assert rule == {"condition": wanted}, (name, dependency, rule)
    for name in AIRFLOW_SERVICES:
        assert "metadata-db" in services[name]["depends_on"], name
        if name != "airflow-init":
            assert "airflow-init" in services[name]["depends_on"], name
    # The scheduler runs the tasks (LocalExecutor): everything a backup touches is up first.
    assert set(services["airflow-scheduler"]["depends_on"]) >= {
        "airflow-api-server",
        "source-seed",
        "scratch-db",
        "s3-init",
        "mailpit",
    }
    assert "mailpit" in services["airflow-triggerer"]["depends_on"]  # SLA mail leaves from here


# --- S3 permissions ----------------------------------------------------------------------------

# IAM actions each S3 client call of pg_backup.adapters.storage needs (HEAD is authorised as GET).
S3_ACTIONS = {
    "upload_file": {"s3:PutObject", "s3:AbortMultipartUpload"},
    "upload_fileobj": {"s3:PutObject", "s3:AbortMultipartUpload"},
    "put_object": {"s3:PutObject"},
    "head_object": {"s3:GetObject"},
    "get_object": {"s3:GetObject"},
    "head_bucket": {"s3:ListBucket"},
    "list_objects_v2": {"s3:ListBucket"},
    "delete_object": {"s3:DeleteObject"},
    "list_multipart_uploads": {"s3:ListBucketMultipartUploads"},
    "abort_multipart_upload": {"s3:AbortMultipartUpload"},
}
WRITER_NEEDS = {
    "s3:ListBucket",
    "s3:PutObject",
    "s3:GetObject",
    "s3:PutObjectRetention",
    "s3:DeleteObject",
}
SWEEPER_NEEDS = {
    "s3:ListBucket",
    "s3:GetObject",
    "s3:GetObjectRetention",
    "s3:GetObjectLegalHold",
    "s3:DeleteObject",
    "s3:ListBucketMultipartUploads",
    "s3:AbortMultipartUpload",
}
NEVER = {
    "s3:*",
    "s3:DeleteObjectVersion",
    "s3:BypassGovernanceRetention",
    "s3:PutObjectLegalHold",
    "s3:PutBucketPolicy",
    "s3:PutObjectLockConfiguration",
    "s3:PutLifecycleConfiguration",
    "s3:DeleteBucket",
}


def allowed(policy: dict[str, Any]) -> dict[str, set[str]]:
    """Action -> resources it is allowed on."""
    grants: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for action in statement["Action"]:
            grants.setdefault(action, set()).update(statement["Resource"])
    return grants


STAGING_ARN = "arn:aws:s3:::pg-backups-staging"


def test_s3_policies_cover_every_s3_call_and_no_more() -> None:
    """Writer and sweeper policies grant what storage.py calls, deletes only where needed."""
    from pg_backup.core import layout
    from pg_backup.stages import upload

    storage = (REPO / "plugins" / "pg_backup" / "adapters" / "storage.py").read_text()
    calls = set(re.findall(r"self\.client\.([a-z_0-9]+)", storage))
    calls |= set(re.findall(r'get_paginator\("([a-z_0-9]+)"\)', storage))
    calls -= {"get_paginator"}
    unknown = sorted(calls - S3_ACTIONS.keys())
    assert unknown == [], f"storage.py calls {unknown}: add the IAM actions to S3_ACTIONS/policies"
    writer = allowed(json.loads(POLICIES["writer"].read_text()))
    sweeper = allowed(json.loads(POLICIES["sweeper"].read_text()))
    assert set().union(*(S3_ACTIONS[c] for c in calls)) <= writer.keys() | sweeper.keys()
    assert WRITER_NEEDS <= writer.keys() and SWEEPER_NEEDS <= sweeper.keys()
    assert not (NEVER & (writer.keys() | sweeper.keys()))
    # The writer deletes only what a rerun withdraws (upload.py), never data objects.
    withdrawn = {layout.MANIFEST_OBJECT, layout.VERIFICATION_OBJECT}
    assert "(layout.MANIFEST_OBJECT, layout.VERIFICATION_OBJECT)" in inspect.getsource(upload)
    backups = {r for r in writer["s3:DeleteObject"] if not r.startswith(STAGING_ARN)}
    assert {r.rsplit("/", 1)[1] for r in backups} == withdrawn
    # Staged files are temporary (teardowns delete them), in a bucket of their own.
    assert writer["s3:DeleteObject"] - backups == {f"{STAGING_ARN}/*"}
    assert all(
        r.startswith("arn:aws:s3:::pg-backups")
        for g in (writer, sweeper)
        for rs in g.values()
        for r in rs
    )


def test_readme_shows_the_policies_compose_uses() -> None:
    """The IAM policies in README's operator's guide are the files s3-init applies."""
    readme = (REPO / "README.md").read_text()
    for path in POLICIES.values():
        marker = f"<!-- s3-policy: {path.relative_to(REPO)} -->"
        block = re.search(re.escape(marker) + r"\s*```json\n(.*?)```", readme, re.S)
        assert block, f"README.md lacks {marker} followed by a json block"
        assert json.loads(block[1]) == json.loads(path.read_text()), path.name


def test_repository_paths_in_compose_exist(compose: dict[str, Any]) -> None:
    """Every bind mount and the build context name files of this repository."""
    for name, service in compose["services"].items():
        for mount in mounts(service):
            if mount.is_bind:
                assert mount.host_path.exists(), f"{name}: {mount.source} does not exist"
                assert Path(mount.host_path).is_relative_to(REPO), f"{name}: {mount.source}"
        if "build" in service:
            assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


# --- the second destination (3-2-1) ---------------------------------------------------------


def test_compose_config_has_an_s3_and_a_volume_destination(config: Any) -> None:
    """Every target writes to two destinations: the bucket s3-init makes and a directory."""
    bucket = re.search(r"^bucket=(\S+)$", S3_INIT_SCRIPT.read_text(), re.M)
    assert bucket
    for cfg in config.targets.values():
        assert cfg.multi_destination and len(cfg.destinations) == 2
        s3 = [d for d in cfg.destinations if d.url.startswith("s3://")]
        files = [d for d in cfg.destinations if d.url.startswith("file://")]
        assert [d.url.split("/")[2] for d in s3] == [bucket[1]]
        assert s3[0].aws_conn_id != s3[0].sweep_aws_conn_id  # the writer may not delete
        assert len(files) == 1 and cfg.for_destination(files[0].name).retention.daily == 7


def test_volume_destination_is_a_named_volume_every_task_runner_mounts(
    compose: dict[str, Any], config: Any
) -> None:
    """The file:// destination lies on a declared named volume in every Airflow and CLI service, its mount point made by the image."""
    declared = set(compose["volumes"])
    for cfg in config.targets.values():
        (dest,) = [d for d in cfg.destinations if d.url.startswith("file://")]
        path = dest.url[len("file://") :]
        # The Celery workers too: an upload_<destination> task may run on either.
        for name in [*AIRFLOW_SERVICES, CLI_SERVICE, *WORKERS]:
            mount, inside = resolve(compose["services"][name], path)
            assert not mount.is_bind and mount.source in declared, (name, mount)
            assert mount.source != "pg-backup-staging" and inside == "", (name, mount)
        assert path in DOCKERFILE.read_text()  # a new volume takes the mount point's owner


# --- profile celery ------------------------------------------------------------------------------

CELERY_CONFIG = COMPOSE_DIR / "pg_backup.celery.yaml"


def test_celery_profile_runs_two_workers_that_share_no_disk(compose: dict[str, Any]) -> None:
    """Profile celery: Redis broker, two named workers on their own volumes, the celery config."""
    services = compose["services"]
    assert services["redis"]["profiles"] == ["celery"]
    env = airflow_env(compose)
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    backend = urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+"))
    assert backend.hostname == "metadata-db"
    staging_mounts = []
    names = set()
    for name in WORKERS:
        worker = services[name]
        assert worker["profiles"] == ["celery"], name
        assert worker["command"] == ["bash", SCRIPT_IN_CONTAINER, "celery-worker"], name
        assert {"redis", "metadata-db", "airflow-init", "scratch-db", "s3-init"} <= set(
            worker["depends_on"]
        )
        names.add(worker["environment"]["PG_BACKUP_CELERY_HOSTNAME"].split("@")[0])
        # Everything else as the other Airflow services.
        rest = {k: v for k, v in worker["environment"].items() if k != "PG_BACKUP_CELERY_HOSTNAME"}
        assert rest == env, name
        mount, _ = resolve(worker, "/var/lib/pg_backup/staging")
        assert not mount.is_bind and mount.source in compose["volumes"], name
        staging_mounts.append(mount.source)
        assert "pg-backup-staging" not in {m.source for m in mounts(worker)}, name
    assert len(names) == 2 and len(set(staging_mounts)) == 2, (names, staging_mounts)
    # The executor is chosen in .env, LocalExecutor by default.
    assert "${AIRFLOW_EXECUTOR:-LocalExecutor}" in COMPOSE_FILE.read_text()
    assert "celery-worker)" in AIRFLOW_SH.read_text()


def test_celery_config_stages_in_the_bucket_s3_init_makes(tmp_path: Path) -> None:
    """pg_backup.celery.yaml is pg_backup.yaml plus staging_url in the staging bucket."""
    from pyrage import x25519

    from pg_backup.core.config import load_config

    public = str(x25519.Identity.generate().to_public())
    loaded = {}
    for path in (CONFIG, CELERY_CONFIG):
        copy_path = tmp_path / path.name
        copy_path.write_text(path.read_text().replace(PLACEHOLDER, public))
        loaded[path.name] = load_config(copy_path).targets
    plain, celery = loaded[CONFIG.name], loaded[CELERY_CONFIG.name]
    assert plain.keys() == celery.keys()
    script = S3_INIT_SCRIPT.read_text()
    staging_bucket = re.search(r"^staging_bucket=(\S+)$", script, re.M)
    assert staging_bucket and 'mc mb --ignore-existing "local/$staging_bucket"' in script
    for name, cfg in celery.items():
        assert cfg.staging_url and cfg.staging_url.split("/")[2] == staging_bucket[1]
        assert cfg.model_copy(update={"staging_url": None}) == plain[name]
    # The writer may delete in the staging bucket (teardowns), only there besides withdrawals.
    writer = allowed(json.loads(POLICIES["writer"].read_text()))
    assert f"arn:aws:s3:::{staging_bucket[1]}/*" in writer["s3:DeleteObject"]
