"""What one verification proved: rows, content, objects; what it skipped and why; the report.

Pure: the comparisons are made by ``core.counts`` and ``core.inventory``; this module adds
them up into the outcome, the plaintext summary (categories and numbers, never names) and the
table of differences a person reads in the log or the failure mail (names, never values).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pg_backup.core.counts import Comparison, format_differences
from pg_backup.core.inventory import ObjectComparison, format_object_differences

NOT_RESTORABLE = "not restorable by the scratch login"


@dataclass(frozen=True)
class Proof:
    """The outcome of comparing a restored database with the dump's snapshot.

    :param rows: counts and fingerprints, relation by relation (or partition root)
    :param objects: the object inventory, None for sets written before inventories
    :param content_note: why no content was compared at all (None: it was, where it could be)
    :param hidden: relations the restoring login could not read, with the reason
    :param login: the restoring login, for the fix of objects it may not create
    """

    rows: Comparison
    objects: ObjectComparison | None
    content_note: str | None = None
    hidden: list[tuple[str, str]] = field(default_factory=list)
    login: str = ""

    @property
    def ok(self) -> bool:
        """True when no row, content or object differs."""
        return self.rows.ok and (self.objects is None or self.objects.ok)

    @property
    def proven(self) -> list[str]:
        """What was proven: ``counts``, ``content`` (of some relations), ``objects``."""
        out = ["counts"]
        if self.rows.content_checked:
            out.append("content")
        if self.objects is not None:
            out.append("objects")
        return out

    def skipped(self) -> list[dict[str, Any]]:
        """What was not proven, by kind and reason, with how many (no names: plaintext)."""
        out: list[dict[str, Any]] = []
        if self.content_note:
            out.append({"what": "content", "count": self.rows.checked, "reason": self.content_note})
        for reason, count in sorted(Counter(r for _, r in self.rows.content_skipped).items()):
            out.append({"what": "content", "count": count, "reason": reason})
        for reason, count in sorted(Counter(r for _, r in self.hidden).items()):
            out.append({"what": "counts and content", "count": count, "reason": reason})
        if self.objects is None:
            out.append(
                {"what": "objects", "count": 0, "reason": "set written before object inventories"}
            )
        else:
            by_kind = Counter(category for category, _ in self.objects.not_restorable)
            for category, count in sorted(by_kind.items()):
                out.append({"what": category, "count": count, "reason": NOT_RESTORABLE})
        return out

    def report(self) -> str:
        """Every difference and skipped object by name, as tables a person can read."""
        parts: list[str] = []
        if self.rows.differences:
            parts.append(format_differences(self.rows.differences))
        if self.objects is not None and self.objects.differences:
            parts.append(format_object_differences(self.objects.differences))
        return "\n\n".join(parts)

    def notes(self) -> list[str]:
        """Warnings and skipped items by name, each a line with its reason and fix."""
        lines = [f"{d.describe()} (materialized view: warning only)" for d in self.rows.warnings]
        if self.objects is not None:
            lines += [
                f"{d.describe()} (database property: pg_restore applies it only with --create)"
                for d in self.objects.warnings
            ]
            lines += [
                f"{category} {key}: {NOT_RESTORABLE} {self.login!r} (creating it needs a "
                "superuser): not restored and not proven; to prove it, give the scratch "
                "connection a superuser login"
                for category, key in self.objects.not_restorable
            ]
        lines += [
            f"{label}: counts and content not proven: {reason}" for label, reason in self.hidden
        ]
        lines += [
            f"{label}: content not proven: {reason}" for label, reason in self.rows.content_skipped
        ]
        if self.content_note:
            lines.append(f"content not proven: {self.content_note}")
        lines += [
            f"{root}: compared as a whole (pg_dump loads its leaves through it)"
            for root in self.rows.roots
        ]
        return lines

    def summary(self) -> str:
        """One line: what was proven, in numbers."""
        text = f"{self.rows.checked} relations, {self.rows.rows:,} rows exactly as in the snapshot"
        if self.rows.content_checked:
            text += f"; content of {self.rows.content_checked} relations identical"
        if self.objects is not None:
            text += (
                f"; {self.objects.checked} objects and {self.objects.sequences_checked} sequence "
                "values as in the snapshot"
            )
        return text
