"""Password hashing (argon2id), the password policy, and generated passwords.

Parameters are OWASP's argon2id profile (m=19 MiB, t=2, p=1): memory-hard, ~65 ms on
this 2-core machine, where argon2-cffi's default (RFC 9106 "second", m=64 MiB, p=4)
costs ~600 ms per sign-in -- too slow for a login form that several workers serve.
``dummy_verify`` spends the same time for unknown users, so a login answer does not
tell whether a name exists.
"""

from __future__ import annotations

import contextlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

#: OWASP Password Storage Cheat Sheet, argon2id: 19 MiB, 2 iterations, 1 lane.
ARGON2_MEMORY_KIB = 19456
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1

_hasher = PasswordHasher(
    time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM
)
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

MIN_LENGTH = 12
#: Argon2 hashes whatever it gets; cap the input so a megabyte "password" is not a DoS.
MAX_LENGTH = 256
#: Generated passwords: 18 url-safe characters = 108 bits.
GENERATED_BYTES = 14

#: The most common passwords that pass the length rule (breach-corpus top entries).
DENY_LIST = frozenset(
    {
        "123456789012",
        "1234567890123",
        "12345678901234",
        "qwertyuiopas",
        "qwertyuiop123",
        "password1234",
        "password12345",
        "passwordpassword",
        "iloveyou1234",
        "administrator",
        "administrator1",
        "adminadminadmin",
        "letmein12345",
        "welcome12345",
        "welcome123456",
        "changeme1234",
        "changemechangeme",
        "trustno1trustno1",
        "football1234",
        "baseball1234",
        "abc123abc123",
        "aaaaaaaaaaaa",
        "111111111111",
        "000000000000",
        "monkey123456",
        "sunshine1234",
        "princess1234",
        "dragon123456",
        "superman1234",
        "outlinkoutlink",
        "outlink12345",
        "outlink123456",
        "correcthorsebatterystaple",
        "passw0rd1234",
    }
)


def hash_password(password: str) -> str:
    """The argon2id hash string to store."""
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """True if ``password`` matches; never raises for a wrong or malformed hash."""
    if len(password) > MAX_LENGTH:
        dummy_verify()
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def dummy_verify() -> None:
    """Spend one verification's time on nothing (unknown user, locked account)."""
    with contextlib.suppress(VerificationError):
        _hasher.verify(_DUMMY_HASH, "not the password")


def needs_rehash(stored_hash: str) -> bool:
    """True when the stored hash uses older parameters than today's."""
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return False


def policy_problems(password: str, username: str) -> list[str]:
    """Why ``password`` is refused (empty list: acceptable)."""
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(f"Use at least {MIN_LENGTH} characters.")
    if len(password) > MAX_LENGTH:
        problems.append(f"Use at most {MAX_LENGTH} characters.")
    lowered = password.lower()
    if lowered in DENY_LIST or len(set(lowered)) <= 2:
        problems.append("This password is too common.")
    if username and username.lower() in lowered:
        problems.append("The password must not contain the username.")
    return problems


def generate_password() -> str:
    """A random password for a new account or a reset (shown once, changed at first login)."""
    return secrets.token_urlsafe(GENERATED_BYTES)
