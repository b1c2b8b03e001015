"""The enrolment core, sans-I/O: request bytes in, answer bytes out."""

from __future__ import annotations

import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, select

from pki.fleet import ensure_site
from pki.identity import DeviceIdentity, identity_from_cert
from pki.keys import generate_key
from pki.renewal import build_csr
from pki.tokens import create_token, revoke_token
from pki.wire import MAX_REQUEST_BYTES
from protocol.ids import new_device_id
from relay_server.enrollment import EnrollmentService
from store.db import session_scope
from store.models import Certificate, Device, EnrollmentToken
from tests.conftest import UNIT
from tests.pki_fixtures import FleetPKI

DER = serialization.Encoding.DER

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def new_token(engine: Engine, *, ttl: timedelta = timedelta(hours=1), now: datetime = T0) -> str:
    with session_scope(engine) as session:
        site = ensure_site(session, "acme", "lab")
        return create_token(session, site, ttl=ttl, now=now).secret


def ask(service: EnrollmentService, obj: Any, now: datetime = T0) -> dict[str, Any]:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    answer = json.loads(service.handle(raw, "192.0.2.1:1234", now=now))
    assert isinstance(answer, dict)
    return answer


def request(token: str, key: Any = None) -> dict[str, str]:
    return {"token": token, "csr": build_csr(key or generate_key()).decode()}


@pytest.fixture
def service(db_engine: Engine, fleet_pki: FleetPKI) -> EnrollmentService:
    return EnrollmentService(db_engine, fleet_pki.ca, timedelta(days=30))


def test_enrols_with_server_chosen_identity(
    service: EnrollmentService, db_engine: Engine, fleet_pki: FleetPKI
) -> None:
    key = generate_key()
    answer = ask(service, request(new_token(db_engine), key))
    assert answer["ok"] is True
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    assert cert.public_key() == key.public_key()
    assert answer["ca_certificate"].encode() == fleet_pki.ca.cert_pem
    identity = identity_from_cert(cert)
    assert isinstance(identity, DeviceIdentity)
    assert (identity.device_id, identity.customer, identity.site) == (
        answer["device_id"],
        "acme",
        "lab",
    )
    assert cert.not_valid_after_utc - T0 == timedelta(days=30)
    with session_scope(db_engine) as session:
        device = session.get_one(Device, identity.device_id)
        assert device.enrolled_at == T0
        row = session.get_one(Certificate, identity.serial)
        assert (row.kind, row.device_id) == ("device", identity.device_id)


def test_csr_subject_and_sans_are_ignored(service: EnrollmentService, db_engine: Engine) -> None:
    key = generate_key()
    victim = new_device_id()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, victim)]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(f"urn:outlink:device:{victim}"),
                    x509.UniformResourceIdentifier("urn:outlink:customer:other"),
                    x509.UniformResourceIdentifier("urn:outlink:service:portal"),
                    x509.DNSName("relay.example"),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    answer = ask(service, {"token": new_token(db_engine), "csr": pem})
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    identity = identity_from_cert(cert)
    assert isinstance(identity, DeviceIdentity)
    assert identity.device_id == answer["device_id"] != victim
    assert identity.customer == "acme"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
    assert "urn:outlink:service:portal" not in san.get_values_for_type(
        x509.UniformResourceIdentifier
    )


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"csr": "x"}',
        b'{"token": "olk_x"}',
        b'{"token": 5, "csr": "x"}',
        b"\xff\xfe",
        b"{" + b" " * MAX_REQUEST_BYTES + b"}",
    ],
)
def test_malformed_requests_are_invalid_request(service: EnrollmentService, body: bytes) -> None:
    answer = ask(service, body)
    assert (answer["ok"], answer["error"]) == (False, "invalid_request")


def test_unusable_tokens_all_get_the_same_answer(
    service: EnrollmentService, db_engine: Engine
) -> None:
    used = new_token(db_engine)
    assert ask(service, request(used))["ok"] is True
    expired = new_token(db_engine, ttl=timedelta(minutes=5), now=T0 - timedelta(minutes=10))
    revoked = new_token(db_engine)
    with session_scope(db_engine) as session:
        token_id = session.scalars(select(EnrollmentToken.id).order_by(EnrollmentToken.id)).all()
        assert revoke_token(session, token_id[-1])
    answers = [
        ask(service, request(secret))
        for secret in (used, expired, revoked, "olk_unknown", "no-prefix", "olk_" + "x" * 500)
    ]
    assert all(a == answers[0] for a in answers)
    assert answers[0]["error"] == "invalid_token"


def test_token_expiry_is_exclusive(service: EnrollmentService, db_engine: Engine) -> None:
    token = new_token(db_engine, ttl=timedelta(minutes=5))
    assert ask(service, request(token), now=T0 + timedelta(minutes=5))["error"] == "invalid_token"
    token = new_token(db_engine, ttl=timedelta(minutes=5))
    assert ask(service, request(token), now=T0 + timedelta(minutes=4, seconds=59))["ok"]


@pytest.mark.parametrize(
    "key",
    [
        rsa.generate_private_key(65537, 2048),
        ec.generate_private_key(ec.SECP224R1()),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["rsa2048", "p224", "ed25519"],
)
def test_weak_keys_are_refused_without_burning_the_token(
    key: Any, service: EnrollmentService, db_engine: Engine
) -> None:
    token = new_token(db_engine)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, algorithm)
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    answer = ask(service, {"token": token, "csr": pem})
    assert (answer["ok"], answer["error"]) == (False, "key_too_weak")
    assert ask(service, request(token))["ok"] is True


@pytest.mark.parametrize("csr", ["garbage", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"])
def test_bad_csr(csr: str, service: EnrollmentService, db_engine: Engine) -> None:
    answer = ask(service, {"token": new_token(db_engine), "csr": csr})
    assert (answer["ok"], answer["error"]) == (False, "bad_csr")


def test_csr_with_broken_signature_is_refused(
    service: EnrollmentService, db_engine: Engine
) -> None:
    der = bytearray(x509.load_pem_x509_csr(build_csr(generate_key())).public_bytes(DER))
    der[-1] ^= 0x01  # last byte of the signature's s: still well-formed, no longer valid
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der))
    pem += b"-----END CERTIFICATE REQUEST-----\n"
    assert x509.load_pem_x509_csr(pem).is_signature_valid is False
    answer = ask(service, {"token": new_token(db_engine), "csr": pem.decode()})
    assert (answer["ok"], answer["error"]) == (False, "bad_csr")


def test_internal_failure_is_a_clean_refusal_and_keeps_the_token(
    service: EnrollmentService, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = new_token(db_engine)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr("relay_server.enrollment.certify_device", broken)
    answer = ask(service, request(token))
    assert (answer["ok"], answer["error"]) == (False, "internal_error")
    assert "secret internal detail" not in json.dumps(answer)
    assert "Traceback" not in json.dumps(answer)
    monkeypatch.undo()
    with session_scope(db_engine) as session:
        assert session.scalars(select(Device)).all() == []
    assert ask(service, request(token))["ok"] is True


def test_concurrent_enrolments_with_one_token_make_one_device(
    service: EnrollmentService, db_engine: Engine
) -> None:
    racers = 6
    token = new_token(db_engine)
    bodies = [json.dumps(request(token)).encode() for _ in range(racers)]
    start = threading.Barrier(racers, timeout=10 * UNIT)

    def race(body: bytes) -> dict[str, Any]:
        start.wait()
        return json.loads(service.handle(body, "192.0.2.9:1", now=T0))  # type: ignore[no-any-return]

    with ThreadPoolExecutor(racers) as pool:
        answers = list(pool.map(race, bodies))
    assert [a["ok"] for a in answers].count(True) == 1
    assert {a.get("error") for a in answers if not a["ok"]} == {"invalid_token"}
    with session_scope(db_engine) as session:
        assert len(session.scalars(select(Device)).all()) == 1
