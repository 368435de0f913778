"""Encryption at rest of citizens' contact data (name, phone, ID number, address, e-mail, openid).

Keys come from the environment: ``WUJI_CONTACT_KEYS``, comma-separated Fernet keys (AES-128-CBC +
HMAC-SHA256, from ``cryptography``), newest first. Every key listed decrypts; only the first one
encrypts. Rotation: put a new key in front, restart, run ``intake rotate-keys`` (re-encrypts every
row under the newest key), then drop the old key. A key is made with ``intake generate-key``.

There is deliberately no built-in default: a service without keys refuses to store or read contact
data instead of writing it under a well-known key. ``make run`` keeps a development key in
``var/contact-keys``; the test fixtures set a test key.
"""
import os

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

KEYS_ENV = "WUJI_CONTACT_KEYS"


class KeysMissing(RuntimeError):
    pass


class ContactKeys:
    """The key ring: encrypt with the newest key, decrypt with any."""

    def __init__(self, keys):
        keys = [k.strip() for k in keys if k and k.strip()]
        if not keys:
            raise KeysMissing(f"{KEYS_ENV} is not set: contact data cannot be encrypted "
                              "(make one with `intake generate-key`)")
        try:
            self._fernets = [Fernet(k.encode("ascii")) for k in keys]
        except (ValueError, UnicodeEncodeError):
            raise KeysMissing(f"{KEYS_ENV} holds a value that is not a Fernet key "
                              "(32 url-safe base64-encoded bytes)") from None
        self._ring = MultiFernet(self._fernets)

    @classmethod
    def from_text(cls, text):
        return cls((text or "").split(","))

    def encrypt(self, plain):
        return self._ring.encrypt(plain.encode("utf-8")).decode("ascii")

    def decrypt(self, token):
        return self._ring.decrypt(token.encode("ascii")).decode("utf-8")

    def is_current(self, token):
        """Encrypted under the newest key?"""
        try:
            self._fernets[0].decrypt(token.encode("ascii"))
            return True
        except InvalidToken:
            return False

    def can_decrypt(self, token):
        try:
            self._ring.decrypt(token.encode("ascii"))
            return True
        except (InvalidToken, UnicodeEncodeError):
            return False

    def rotate(self, token):
        return self._ring.rotate(token.encode("ascii")).decode("ascii")


def generate_key():
    return Fernet.generate_key().decode("ascii")


_keys = None


def keys():
    """The process's key ring, read once from the environment (``use_keys`` replaces it)."""
    global _keys
    if _keys is None:
        _keys = ContactKeys.from_text(os.environ.get(KEYS_ENV, ""))
    return _keys


def use_keys(ring):
    """Replace the process's key ring (tests; the rotate command after reading its own keys)."""
    global _keys
    _keys = ring


class Encrypted(TypeDecorator):
    """A text column stored encrypted: the application reads and writes plain ``str``."""
    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else keys().encrypt(value)

    def process_result_value(self, value, dialect):
        return None if value is None else keys().decrypt(value)
