"""Password hashing (argon2id), the password policy, and generated passwords.

The policy (ASVS 5.0 6.2): at least 12 characters, not on the NCSC's list of the
100,000 most common breached passwords, and strong by the zxcvbn estimator; every
refusal says why, in words the user can act on.

Parameters are OWASP's argon2id profile (m=19 MiB, t=2, p=1): memory-hard, ~65 ms on
this 2-core machine, where argon2-cffi's default (RFC 9106 "second", m=64 MiB, p=4)
costs ~600 ms per sign-in -- too slow for a login form that several workers serve.
``dummy_verify`` spends the same time for unknown users, so a login answer does not
tell whether a name exists.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import secrets
from importlib import resources

import zxcvbn
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

#: zxcvbn's score (0-4) a new password must reach: 4 = more than 10^10 guesses, what a
#: word, a year and two symbols (``Summer2024!!``, score 3) do not reach.
MIN_STRENGTH_SCORE = 4
#: zxcvbn raises on longer input (its ``max_length``, a guard against its super-linear
#: matching); the characters past these only make a password stronger.
STRENGTH_CHECK_CHARS = 72
#: zxcvbn's scenario for the crack time we quote: an offline attack on a slow hash.
_ATTACK_SPEED = "offline_slow_hashing_1e4_per_second"
#: Words a guesser tries first against this portal (zxcvbn's ``user_inputs``).
CONTEXT_WORDS = ("outlink", "portal", "remote", "service", "admin", "administrator")
#: The NCSC's top 100,000 of Have I Been Pwned (see data/NOTICE.md).
COMMON_LIST = "data/pwned-passwords-top100k.txt.gz"
#: The line that ends the list's header; entries follow it.
_COMMON_LIST_HEADER_END = "--"


@functools.cache
def common_passwords() -> frozenset[str]:
    """The breached-password list, lowercased (loaded once, on first use: ~0.1 s, ~10 MB)."""
    raw = gzip.decompress(resources.files("web").joinpath(COMMON_LIST).read_bytes())
    lines = raw.decode("utf-8").splitlines()
    body = lines[lines.index(_COMMON_LIST_HEADER_END) + 1 :]
    return frozenset(line.lower() for line in body if line)


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
    """Why ``password`` is refused, in words for the person choosing it (empty: acceptable)."""
    if len(password) < MIN_LENGTH:
        return [f"Use at least {MIN_LENGTH} characters."]
    if len(password) > MAX_LENGTH:
        return [f"Use at most {MAX_LENGTH} characters."]
    problems = []
    if username and username.lower() in password.lower():
        problems.append("The password must not contain the username.")
    if password.lower() in common_passwords():
        problems.append("This password is in lists of breached passwords that attackers try first.")
    else:
        result = zxcvbn.zxcvbn(
            password[:STRENGTH_CHECK_CHARS], user_inputs=[username, *CONTEXT_WORDS]
        )
        if result["score"] < MIN_STRENGTH_SCORE:
            feedback = result["feedback"]
            problems.append(
                "This password would be guessed too easily."
                + (f" {feedback['warning']}" if feedback["warning"] else "")
                + "".join(f" {tip}" for tip in feedback["suggestions"])
                + " With a stolen password database it would fall in about "
                + f"{result['crack_times_display'][_ATTACK_SPEED]}."
                + " A few unrelated words make a strong password that is easy to remember."
            )
    return problems


def generate_password() -> str:
    """A random password for a new account or a reset (shown once, changed at first login)."""
    return secrets.token_urlsafe(GENERATED_BYTES)
