"""Known vulnerabilities in the dependencies, judged against a reviewed allow-list.

The findings are pip-audit's JSON report (``pip-audit -f json``): per dependency its
``vulns`` (``id``, ``aliases``, ``fix_versions``, ``description``), or a ``skip_reason``
when it could not be audited. The run fails on

* a vulnerability that no allow-list entry names (by its id or an alias, for that package);
* a dependency that was not audited at all, unless an entry for it has the id
  ``NOT-AUDITED`` — a skipped dependency is not a clean one;
* an entry whose expiry date has passed, whether or not it still matches: an exception
  is re-reviewed or removed, never kept by default.

The allow-list is ``deploy/vulnerability-allowlist.toml``: ``[[allow]]`` tables with
``id``, ``package``, ``reason`` and ``expires`` (a TOML date), and nothing else.
"""

from __future__ import annotations

import json
import tomllib
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from packaging.utils import canonicalize_name

#: The id of an entry that accepts a dependency the advisory service did not answer for.
NOT_AUDITED = "NOT-AUDITED"
FIELDS = {"id", "package", "reason", "expires"}
#: Seconds to wait for one answer of the package index's JSON API.
LOOKUP_TIMEOUT = 30


class AllowlistError(ValueError):
    """The allow-list file is malformed (the run fails: an unreadable review is no review)."""


@dataclass(frozen=True)
class Allowance:
    """One reviewed exception: this vulnerability in this package is accepted until expires."""

    id: str
    package: str
    reason: str
    expires: date

    def __str__(self) -> str:
        return f"{self.id} in {self.package} (expires {self.expires.isoformat()})"


@dataclass
class Verdict:
    """What the run reports: failures fail it, the rest is printed for the record."""

    failures: list[str] = field(default_factory=list)
    #: The packages behind the failures (to say which roles carry them).
    failing_packages: set[str] = field(default_factory=set)
    allowed: list[str] = field(default_factory=list)
    #: Entries that matched nothing in this run (fixed upstream: remove them).
    unused: list[Allowance] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def parse_allowlist(text: str) -> list[Allowance]:
    """The entries of an allow-list file; AllowlistError on any missing, extra or wrong field."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AllowlistError(f"not TOML: {exc}") from exc
    if set(table) - {"allow"}:
        raise AllowlistError(f"unknown tables: {sorted(set(table) - {'allow'})}")
    entries = []
    for n, entry in enumerate(table.get("allow", []), start=1):
        if set(entry) != FIELDS:
            raise AllowlistError(f"entry {n}: needs exactly {sorted(FIELDS)}, has {sorted(entry)}")
        texts = [entry[k] for k in ("id", "package", "reason")]
        if not all(isinstance(v, str) and v.strip() for v in texts):
            raise AllowlistError(f"entry {n}: id, package and reason must be non-empty text")
        if not isinstance(entry["expires"], date):
            raise AllowlistError(f"entry {n}: expires must be a TOML date like 2027-01-31")
        entries.append(
            Allowance(
                id=entry["id"].strip(),
                package=canonicalize_name(entry["package"]),
                reason=entry["reason"].strip(),
                expires=entry["expires"],
            )
        )
    return entries


def judge(report: Mapping[str, Any], allowances: list[Allowance], today: date) -> Verdict:
    """Apply the allow-list to a pip-audit JSON report (see the module docstring)."""
    verdict = Verdict()
    used: set[Allowance] = set()
    for entry in allowances:
        if entry.expires < today:
            verdict.failures.append(f"allow-list entry expired: {entry} — review or remove it")
    for dep in report.get("dependencies", []):
        package = canonicalize_name(dep["name"])
        findings = (
            [({NOT_AUDITED}, f"{package} not audited: {dep['skip_reason']}")]
            if "skip_reason" in dep
            else [
                (
                    {vuln["id"], *vuln.get("aliases", [])},
                    f"{package} {dep['version']}: {vuln['id']} (fixed in "
                    f"{', '.join(vuln.get('fix_versions', [])) or 'no release'})",
                )
                for vuln in dep.get("vulns", [])
            ]
        )
        for names, text in findings:
            match = next(
                (
                    a
                    for a in allowances
                    if canonicalize_name(a.package) == package and a.id in names
                ),
                None,
            )
            if match is None:
                verdict.failures.append(text)
                verdict.failing_packages.add(package)
            else:
                used.add(match)
                if match.expires >= today:
                    verdict.allowed.append(
                        f"{text} — allowed until {match.expires}: {match.reason}"
                    )
    verdict.unused = [a for a in allowances if a not in used and a.expires >= today]
    return verdict


#: (latest release, that release's advisories in the JSON API's form) of one project.
ProjectLookup = Callable[[str], tuple[str, list[dict[str, Any]]]]


def project_advisories(name: str) -> tuple[str, list[dict[str, Any]]]:
    """The latest release of a project and the advisories that affect it, from the index.

    The index's project document carries the advisories of its latest release only; pip
    knows the index's address.
    """
    from pip._internal.models.index import PyPI

    url = f"{PyPI.pypi_url}/{canonicalize_name(name)}/json"
    with urllib.request.urlopen(url, timeout=LOOKUP_TIMEOUT) as answer:  # noqa: S310 (https)
        document = json.load(answer)
    return str(document["info"]["version"]), list(document.get("vulnerabilities") or [])


def fill_skipped(
    report: Mapping[str, Any], pinned: Mapping[str, str], lookup: ProjectLookup
) -> dict[str, Any]:
    """Audit again, from the project document, the dependencies pip-audit had to skip.

    pip-audit asks the index for the advisories of each exact release; an index (or a
    mirror) that does not serve per-release documents makes it skip every dependency and
    report nothing found. The project document answers for the latest release, so a
    skipped dependency installed at its latest release is audited from it; any other
    stays skipped, with the reason.
    """
    filled = []
    for dep in report.get("dependencies", []):
        name = canonicalize_name(dep["name"])
        if "skip_reason" not in dep or name not in pinned:
            filled.append(dep)
            continue
        latest, advisories = lookup(name)
        if latest != pinned[name]:
            reason = (
                f"{name} {pinned[name]}: the index gave no advisories for this release, and "
                f"its project document covers only the latest ({latest})"
            )
            filled.append({"name": name, "skip_reason": reason})
            continue
        vulns = [
            {
                "id": adv["id"],
                "fix_versions": list(adv.get("fixed_in") or []),
                "aliases": list(adv.get("aliases") or []),
                "description": adv.get("summary") or adv.get("details") or "",
            }
            for adv in advisories
            if not adv.get("withdrawn")
        ]
        filled.append({"name": name, "version": pinned[name], "vulns": vulns})
    return {**report, "dependencies": filled}
