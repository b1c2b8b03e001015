"""The supply chain on record: a CycloneDX SBOM per role, and an audit of what it lists.

``./outlink test`` runs this before the suite (``python -m stack.sbom`` alone). The wheel
is built and ``outlink[role]`` installed per role exactly as a device or a server would
(stack/wheel.py); ``cyclonedx-py environment`` records each environment with versions and
licences, then the front-end libraries vendored in the installed package
(``web/static/vendor/<lib>/`` with its ``package.json`` and licence file) join it as npm
components. Every Python component of the three SBOMs is audited with pip-audit against
the package index's advisory data; stack/vulnerabilities.py judges the findings against
``deploy/vulnerability-allowlist.toml``.

Writes ``var/sbom/<role>.cdx.json`` and ``var/sbom/audit.json`` (the findings judged).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.utils import canonicalize_name

from stack import vulnerabilities
from stack.wheel import CLEAN_ENV, build_wheel, copy_source, install_roles

ROLES = ("agent", "relay", "portal")
OUT = Path("var/sbom")
ALLOWLIST = Path("deploy/vulnerability-allowlist.toml")
#: Where the installed package keeps vendored front-end libraries, one folder each.
VENDOR = Path("web/static/vendor")
#: Seconds pip-audit waits for one answer of the index.
AUDIT_TIMEOUT = 30


class IncompleteSBOM(RuntimeError):
    """A component without a version or a licence, or an SBOM the schema refuses."""


def vendored_components(site_packages: Path) -> list[dict[str, Any]]:
    """One CycloneDX component per vendored library, from its package.json and licence file.

    A library without a licence file or a ``license`` field is an error: it must not ship
    unrecorded.
    """
    components = []
    for manifest in sorted((site_packages / VENDOR).glob("*/package.json")):
        meta = json.loads(manifest.read_text())
        licence_files = sorted(manifest.parent.glob("LICEN[CS]E*"))
        if not meta.get("license") or not licence_files:
            raise IncompleteSBOM(f"{manifest.parent}: needs a license field and a LICENSE file")
        purl = f"pkg:npm/{meta['name']}@{meta['version']}"
        components.append(
            {
                "type": "library",
                "bom-ref": purl,
                "name": meta["name"],
                "version": meta["version"],
                "licenses": [
                    {
                        "license": {
                            "id": meta["license"],
                            "text": {
                                "contentType": "text/plain",
                                "content": licence_files[0].read_text(),
                            },
                        }
                    }
                ],
                "purl": purl,
                "properties": [
                    {
                        "name": "outlink:vendored-at",
                        "value": str(manifest.parent.relative_to(site_packages)),
                    }
                ],
            }
        )
    return components


def role_sbom(venv: Path, role: str) -> dict[str, Any]:
    """The SBOM of one role's environment: outlink as the subject, everything it installs.

    Raises IncompleteSBOM when a component lacks a version or a licence, or when the result
    is not valid CycloneDX.
    """
    command = [sys.executable, "-m", "cyclonedx_py", "environment", "--output-reproducible"]
    command += ["-o", "-", str(venv / "bin" / "python")]
    generated = subprocess.run(
        command,
        check=True,
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
    ).stdout
    bom: dict[str, Any] = json.loads(generated)
    # The installed outlink is what the SBOM describes, not one of its parts.
    (subject,) = [c for c in bom["components"] if c["name"] == "outlink"]
    bom["components"].remove(subject)
    subject["type"] = "application"
    subject["properties"] = [{"name": "outlink:role", "value": role}]
    bom["metadata"]["component"] = subject
    (site_packages,) = venv.glob("lib/python*/site-packages")
    vendored = vendored_components(site_packages)
    bom["components"].extend(vendored)
    for dependency in bom["dependencies"]:
        if dependency["ref"] == subject["bom-ref"]:
            dependency.setdefault("dependsOn", []).extend(c["bom-ref"] for c in vendored)
    missing = [
        c["name"] for c in bom["components"] if not c.get("version") or not c.get("licenses")
    ]
    if missing:
        raise IncompleteSBOM(f"{role}: no version or no licence recorded for {missing}")
    schema = SchemaVersion.from_version(bom["specVersion"])
    error = JsonStrictValidator(schema).validate_str(json.dumps(bom))
    if error is not None:
        raise IncompleteSBOM(f"{role}: not valid CycloneDX {bom['specVersion']}: {error}")
    return bom


def python_components(bom: dict[str, Any]) -> dict[str, str]:
    """Canonical name -> version of the PyPI components of an SBOM."""
    return {
        canonicalize_name(c["name"]): c["version"]
        for c in bom["components"]
        if c.get("purl", "").startswith("pkg:pypi/")
    }


def audit(pinned: dict[str, str], work: Path) -> dict[str, Any]:
    """pip-audit's JSON report on exactly these releases, skipped ones filled in.

    (see vulnerabilities.fill_skipped for why some are skipped)
    """
    requirements, report = work / "audited.txt", work / "audit.json"
    requirements.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pinned.items())))
    # --disable-pip --no-deps: audit these pins as they are, resolve nothing.
    command = [sys.executable, "-m", "pip_audit", "-r", str(requirements), "--no-deps"]
    command += ["--disable-pip", "--vulnerability-service", "pypi", "--format", "json"]
    command += ["--progress-spinner", "off", "--timeout", str(AUDIT_TIMEOUT)]
    command += ["--output", str(report)]
    # Exit 1 means "vulnerabilities found": the report says which, the judging follows.
    result = subprocess.run(command, capture_output=True, text=True, env=CLEAN_ENV)
    if not report.exists():
        raise RuntimeError(f"pip-audit wrote no report:\n{result.stdout}\n{result.stderr}")
    findings = json.loads(report.read_text())
    return vulnerabilities.fill_skipped(findings, pinned, vulnerabilities.project_advisories)


def run(root: Path) -> int:
    """Write the SBOMs and the audit under root/var/sbom; 1 when the audit fails."""
    out = root / OUT
    out.mkdir(parents=True, exist_ok=True)
    allowances = vulnerabilities.parse_allowlist((root / ALLOWLIST).read_text())
    with tempfile.TemporaryDirectory(prefix="outlink-sbom-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(copy_source(root, work / "source"), work / "dist")
        venvs = install_roles(wheel, work / "venvs", ROLES)
        pinned: dict[str, str] = {}
        roles_of: dict[str, list[str]] = defaultdict(list)
        for role, venv in venvs.items():
            bom = role_sbom(venv, role)
            (out / f"{role}.cdx.json").write_text(json.dumps(bom, indent=2) + "\n")
            for name, version in python_components(bom).items():
                pinned[name] = version
                roles_of[name].append(role)
            print(f"outlink test: SBOM of the {role}: {out / f'{role}.cdx.json'}")
        report = audit(pinned, work)
    (out / "audit.json").write_text(json.dumps(report, indent=2) + "\n")
    verdict = vulnerabilities.judge(report, allowances, date.today())
    print(f"outlink test: {len(pinned)} Python dependencies audited: {out / 'audit.json'}")
    for line in verdict.allowed:
        print(f"  allowed: {line}")
    for entry in verdict.unused:
        print(f"  unused allow-list entry (remove it): {entry}")
    for line in verdict.failures:
        print(f"  FAIL: {line}")
    for package in sorted(verdict.failing_packages):
        print(f"  {package} is installed by: {', '.join(roles_of[package])}")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(run(Path.cwd()))
