"""Exporter secrets at rest in a shared database: encrypted with a key from the environment.

`AIGW_CONFIG_KEY` (the name is configurable: `[store] encryption_key_env`) holds one or more
Fernet keys, comma-separated (`aigw keygen` prints a new one). The first key encrypts; every key
decrypts, so a key is rotated by putting the new key first, restarting the replicas, and
removing the old one once every stored version has been rewritten or no longer matters. Fernet
(AES-128-CBC with HMAC-SHA256, from `cryptography`) authenticates what it decrypts: a tampered
or foreign value is an error, never garbage.

Without a key a shared store refuses secrets (a Set with header values is FAILED_PRECONDITION)
rather than writing them in plain text to a database that DBAs, replicas and backups read: the
refusal is loud and fixable, a leak is neither. Configs without secrets work without a key.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

__all__ = ["NoKey", "SecretBox", "SecretBoxError", "new_key"]


class SecretBoxError(Exception):
    """A key or a ciphertext that cannot be used; the message never holds either."""


class NoKey(SecretBoxError):
    """Secrets to store, but no key to encrypt them with."""


def new_key() -> str:
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    def __init__(self, keys: str, variable: str) -> None:
        """`keys`: the variable's value (comma-separated Fernet keys, may be empty)."""
        self.variable = variable
        fernets: list[Fernet] = []
        for position, key in enumerate((k.strip() for k in keys.split(",")), start=1):
            if not key:
                continue
            try:
                fernets.append(Fernet(key.encode("ascii")))
            except (ValueError, UnicodeEncodeError):
                # Never echo the value: it is the key.
                raise SecretBoxError(
                    f"{variable}: key {position} is not a Fernet key (32 url-safe base64 "
                    "bytes); `aigw keygen` prints one"
                ) from None
        self._box = MultiFernet(fernets) if fernets else None

    @property
    def has_key(self) -> bool:
        return self._box is not None

    def seal(self, plaintext: bytes) -> str:
        if self._box is None:
            raise NoKey(
                f"exporter secrets (header values, TLS client keys, endpoint query values) "
                f"cannot be stored in the shared database without an encryption key: set "
                f"{self.variable} on every replica (`aigw keygen` prints one), or send the "
                "section without them"
            )
        return self._box.encrypt(plaintext).decode("ascii")

    def open(self, sealed: str) -> bytes:
        if self._box is None:
            raise NoKey(
                f"the stored config holds encrypted secrets, but {self.variable} is not set on "
                "this replica"
            )
        try:
            return self._box.decrypt(sealed.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise SecretBoxError(
                f"stored secrets do not decrypt with the key(s) in {self.variable}: a different "
                "key, or a tampered row"
            ) from None
