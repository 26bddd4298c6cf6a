"""Secrets out of every message: one redaction function for errors, logs, mails and reports.

What counts as secret-looking: the user-info of a URI (``scheme://user:password@host``), a libpq
``password=...`` keyword or ``?password=`` query parameter, an age private key
(``AGE-SECRET-KEY-1...``), and the shapes of AWS access key ids and secret access keys. The
replacement keeps enough to say *what* was there, never the value.
"""

from __future__ import annotations

import re

MARK = "***"

# scheme://<user-info>@ : everything up to the last '@' before whitespace or a quote, so a
# password holding '@', ':', '/' or '#' unencoded is covered too.
_URI_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s'\"<>]*@")
# libpq keyword form (host=db password=secret) and PGPASSWORD=...
_KEYWORD = re.compile(
    r"(?P<key>\b(?:PG)?PASSWORD\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s'\"&,;)]+)",
    re.IGNORECASE,
)
# "password": "..." in a JSON document (an Airflow connection in JSON form)
_JSON = re.compile(
    r'(?P<key>"(?:password|secret|aws_secret_access_key)"\s*:\s*)"(?:[^"\\]|\\.)*"', re.I
)
# ?password=... &secret=... in a URL's query
_QUERY = re.compile(
    r"(?P<key>[?&](?:password|passwd|pwd|secret|token|aws_secret_access_key)=)[^&\s'\"]*",
    re.IGNORECASE,
)
_AGE_SECRET = re.compile(r"AGE-SECRET-KEY-1[0-9A-Za-z]+")
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b")
# A secret access key: 40 characters of base64, mixing upper case, lower case and a digit or
# '/' or '+' (a hex digest is lower case only; base64 checksums are 44 characters long).
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")


def _aws_secret(match: re.Match[str]) -> str:
    text = match.group(0)
    mixed = (
        any(c.isupper() for c in text)
        and any(c.islower() for c in text)
        and any(c.isdigit() or c in "/+" for c in text)
    )
    return MARK if mixed else text


def redact(text: str) -> str:
    """``text`` with every secret-looking part replaced by ``***`` (idempotent)."""
    if not text:
        return text
    text = _URI_USERINFO.sub(lambda m: f"{m['scheme']}{MARK}@", text)
    text = _KEYWORD.sub(lambda m: f"{m['key']}{MARK}", text)
    text = _JSON.sub(lambda m: f'{m["key"]}"{MARK}"', text)
    text = _QUERY.sub(lambda m: f"{m['key']}{MARK}", text)
    text = _AGE_SECRET.sub(f"AGE-SECRET-KEY-1{MARK}", text)
    text = _AWS_KEY_ID.sub(lambda m: m.group(0)[:4] + MARK, text)
    return _AWS_SECRET.sub(_aws_secret, text)


def secret_kind(value: str) -> str | None:
    """What kind of secret ``value`` looks like (for a message), or None when it looks like none.

    Used by fields that must hold an id or a URL without credentials: they refuse such a value
    and name its kind, never the value itself.
    """
    text = value if isinstance(value, str) else ""
    if _AGE_SECRET.search(text) or text.strip().upper().startswith("AGE-SECRET-KEY-"):
        return "an age private key"
    if _URI_USERINFO.search(text):
        return "a URI with credentials"
    if _KEYWORD.search(text) or _QUERY.search(text) or _JSON.search(text):
        return "a password"
    if _AWS_KEY_ID.search(text):
        return "an AWS access key id"
    if _AWS_SECRET.sub(_aws_secret, text) != text:
        return "an AWS secret access key"
    return None


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text``, redacted and cut to ``limit`` characters."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = redact(lines[0]) if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
