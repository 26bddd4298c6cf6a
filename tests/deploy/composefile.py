"""Reading docker-compose.yaml the way Compose does, without Docker: .env, interpolation, mounts.

Only the subset of Compose syntax the project uses is supported, and anything outside it fails
loudly, so a file the helpers cannot read exactly never passes by accident.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
SCHEMA = Path(__file__).with_name("compose-spec.json")

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# $$ | ${NAME} | ${NAME:-x} ${NAME-x} ${NAME:?x} ${NAME?x} ${NAME:+x} ${NAME+x} | $NAME
_REF = re.compile(
    rf"\$(?:(?P<dollar>\$)|\{{(?P<braced>{_NAME})(?:(?P<op>:?[-?+])(?P<arg>[^}}]*))?\}}"
    rf"|(?P<bare>{_NAME}))"
)
_ASSIGNMENT = re.compile(rf"^(?P<name>{_NAME})=(?P<value>.*)$")
_PLAIN_VALUE = re.compile(r"^[^\s'\"$#`\\]*$")


class InterpolationError(ValueError):
    """A required variable is missing, as ``docker compose`` would report it."""


@dataclass(frozen=True)
class EnvEntry:
    """One assignment of a .env file and the comment block right above it."""

    name: str
    value: str
    comment: str


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, EnvEntry]:
    """Parse a .env file restricted to plain values and single-quoted literals."""
    entries: dict[str, EnvEntry] = {}
    comment: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            comment = []
            continue
        if line.startswith("#"):
            comment.append(line)
            continue
        match = _ASSIGNMENT.match(line)
        assert match, f"{path.name}:{number}: not NAME=VALUE: {line!r}"
        name, raw = match["name"], match["value"]
        if raw.startswith("'"):
            assert raw.endswith("'") and raw.count("'") == 2, (
                f"{path.name}:{number}: a single-quoted value must be one literal '...'"
            )
            value = raw[1:-1]
        else:
            assert _PLAIN_VALUE.match(raw), (
                f"{path.name}:{number}: plain values may not hold spaces, quotes, $, # or "
                "backslashes: single-quote the value"
            )
            value = raw
        assert name not in entries, f"{path.name}:{number}: {name} is set twice"
        entries[name] = EnvEntry(name, value, "\n".join(comment))
        comment = []
    return entries


def references(document: Any) -> set[str]:
    """Every variable name interpolated anywhere in a parsed Compose document."""
    found: set[str] = set()
    if isinstance(document, dict):
        for value in document.values():
            found |= references(value)
    elif isinstance(document, list):
        for value in document:
            found |= references(value)
    elif isinstance(document, str):
        for match in _REF.finditer(document):
            name = match["braced"] or match["bare"]
            if name:
                found.add(name)
    return found


def interpolate(document: Any, env: dict[str, str]) -> Any:
    """Substitute variables in every string value, with Compose's rules."""
    if isinstance(document, dict):
        return {key: interpolate(value, env) for key, value in document.items()}
    if isinstance(document, list):
        return [interpolate(value, env) for value in document]
    if not isinstance(document, str):
        return document

    def substitute(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        empty = not value
        if op in (":-", "-"):
            return arg if (value is None or (op == ":-" and empty)) else value
        if op in (":?", "?"):
            if value is None or (op == ":?" and empty):
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return value
        if op in (":+", "+"):
            return "" if (value is None or (op == ":+" and empty)) else arg
        return value or ""

    return _REF.sub(substitute, document)


def load_raw() -> dict[str, Any]:
    """docker-compose.yaml as YAML (anchors and merge keys resolved), before interpolation."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def load(env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yaml interpolated with .env.example (or ``env``)."""
    if env is None:
        env = {name: entry.value for name, entry in read_env_file().items()}
    return interpolate(load_raw(), env)


@dataclass(frozen=True)
class Mount:
    """A volume entry of a service: a bind mount of a repository path or a named volume."""

    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/"))

    @property
    def host_path(self) -> Path:
        assert self.is_bind, f"{self.source} is a named volume"
        return (REPO / self.source).resolve()


def mounts(service: dict[str, Any]) -> list[Mount]:
    """The service's volumes, short syntax only (``source:target[:ro]``)."""
    found = []
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), f"use the short volume syntax: {entry!r}"
        parts = entry.split(":")
        assert len(parts) in (2, 3), f"volume entry {entry!r}: expected source:target[:ro]"
        found.append(Mount(parts[0], parts[1], len(parts) == 3 and parts[2] == "ro"))
    return found


def resolve(service: dict[str, Any], container_path: str) -> tuple[Mount, str]:
    """The mount that holds ``container_path`` in the service, and the path inside that mount."""
    best: Mount | None = None
    for mount in mounts(service):
        target = mount.target.rstrip("/")
        if (container_path == target or container_path.startswith(target + "/")) and (
            best is None or len(target) > len(best.target.rstrip("/"))
        ):
            best = mount
    assert best is not None, f"{container_path} is on no mount of the service"
    return best, container_path[len(best.target.rstrip("/")) :].lstrip("/")
