"""Private keys: generate, check strength, and write/read them safely.

Private key files are written atomically with mode 0600 from the first byte:
a crash never leaves a half-written key, and no other user can ever read one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

#: The fleet's key type: ECDSA P-256 (fast handshakes, small certificates, 128-bit security).
DEFAULT_CURVE = ec.SECP256R1()
#: Curves accepted in CSRs; both give at least 128-bit security.
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)
#: RSA below 3072 bits is under 128-bit security (NIST SP 800-57), so it is refused.
MIN_RSA_BITS = 3072

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


class WeakKeyError(ValueError):
    """A public key is of a type or size the fleet does not accept."""


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh fleet key (ECDSA P-256)."""
    return ec.generate_private_key(DEFAULT_CURVE)


def check_public_key(key: object) -> None:
    """Raise :class:`WeakKeyError` unless ``key`` is EC P-256/P-384 or RSA >= 3072 bits."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ACCEPTED_CURVES):
            raise WeakKeyError(f"EC curve {key.curve.name} not accepted; use P-256 or P-384")
        return
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise WeakKeyError(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} needed")
        return
    raise WeakKeyError(f"key type {type(key).__name__} not accepted; use ECDSA P-256")


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    """PKCS#8 PEM, unencrypted: the file mode protects it (services start unattended)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_file_atomic(path: Path, data: bytes, mode: int = PUBLIC_FILE_MODE) -> None:
    """Write ``data`` to ``path`` via a same-directory temp file, fsync, then rename.

    The temp file is created with ``mode`` already set (``mkstemp`` makes it 0600),
    so a secret is never readable by others, not even for an instant.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_private_key(path: Path, key: PrivateKeyTypes) -> None:
    """Write ``key`` as PEM to ``path`` with mode 0600, atomically."""
    write_file_atomic(path, private_key_pem(key), PRIVATE_FILE_MODE)


def load_private_key(path: Path) -> PrivateKeyTypes:
    """Read an unencrypted PEM private key."""
    return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
