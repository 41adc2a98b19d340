"""CurveZMQ keys of a producer: the collector's public key and this producer's key pair.

A collector started with ``--curve-secret-key`` accepts only encrypted connections from the
public keys in its ``--allow-keys`` directory (``clearml-relay keygen`` writes the files). A
producer then needs:

- ``CLEARML_RELAY_SERVER_KEY``: the collector's public key, as its 40-character Z85 text or as
  the path of the ``.key`` file ``keygen`` wrote;
- its own key pair: ``CLEARML_RELAY_KEY_FILE``, the path of a ``.key_secret`` file (it holds
  both keys), or ``CLEARML_RELAY_PUBLIC_KEY`` and ``CLEARML_RELAY_SECRET_KEY`` as Z85 text.

Without ``CLEARML_RELAY_SERVER_KEY`` the connection is plain (a collector on loopback). Key files
are ZeroMQ's certificate format (``zmq.auth``); nothing here imports more than pyzmq.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.auth

ENV_SERVER_KEY: Final = "CLEARML_RELAY_SERVER_KEY"
ENV_KEY_FILE: Final = "CLEARML_RELAY_KEY_FILE"
ENV_PUBLIC_KEY: Final = "CLEARML_RELAY_PUBLIC_KEY"
ENV_SECRET_KEY: Final = "CLEARML_RELAY_SECRET_KEY"  # noqa: S105 - a variable name
Z85_KEY_CHARS: Final = 40


class KeySettingError(ValueError):
    """A key setting that cannot be used; the message names the variable or file."""


@dataclass(frozen=True, repr=False)
class CurveKeys:
    """What a client socket needs to talk CURVE to a collector (Z85-encoded keys)."""

    server: bytes
    public: bytes
    secret: bytes

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` (before ``connect``) a CURVE client of the collector."""
        sock.curve_serverkey = self.server
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret

    def __repr__(self) -> str:  # never the secret, not even in a traceback
        return f"CurveKeys(server={self.server.decode()!r}, public={self.public.decode()!r})"


def z85_key(name: str, raw: str | bytes) -> bytes:
    """A Z85 key (40 characters that decode to 32 bytes), or KeySettingError naming ``name``."""
    text = raw.encode() if isinstance(raw, str) else raw
    text = text.strip()
    try:
        if len(text) == Z85_KEY_CHARS and len(zmq.utils.z85.decode(text)) == 32:
            return text
    except (ValueError, KeyError, IndexError):
        pass
    raise KeySettingError(f"{name} must be a {Z85_KEY_CHARS}-character Z85 CurveZMQ key or a key file's path")


def load_key_file(name: str, path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    """``(public, secret)`` from a ZeroMQ certificate file; ``secret`` requires the secret key."""
    if not path.is_file():
        raise KeySettingError(f"{name}: no key file at {path}")
    try:
        public, private = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise KeySettingError(f"{name}: {path} is not a ZeroMQ key file ({exc})") from None
    if public is None:
        raise KeySettingError(f"{name}: {path} holds no public key")
    if secret and private is None:
        raise KeySettingError(f"{name}: {path} holds no secret key (use the .key_secret file keygen wrote)")
    return public, private


def curve_from_env(environ: Mapping[str, str] | None = None) -> CurveKeys | None:
    """The producer's CURVE settings, or None for a plain connection.

    Raises:
        KeySettingError: a key is malformed or missing; the message names the variable.

    """
    env = os.environ if environ is None else environ
    server_raw = env.get(ENV_SERVER_KEY, "").strip()
    key_file = env.get(ENV_KEY_FILE, "").strip()
    public_raw, secret_raw = env.get(ENV_PUBLIC_KEY, "").strip(), env.get(ENV_SECRET_KEY, "").strip()
    if not server_raw:
        if key_file or public_raw or secret_raw:
            raise KeySettingError(f"{ENV_SERVER_KEY} is needed too: a key pair alone does not encrypt")
        return None
    if len(server_raw) == Z85_KEY_CHARS and not Path(server_raw).exists():
        server = z85_key(ENV_SERVER_KEY, server_raw)
    else:
        server, _ = load_key_file(ENV_SERVER_KEY, Path(server_raw).expanduser(), secret=False)
    if key_file:
        public, secret = load_key_file(ENV_KEY_FILE, Path(key_file).expanduser(), secret=True)
        assert secret is not None  # load_key_file(secret=True) checked it
    elif public_raw and secret_raw:
        public, secret = z85_key(ENV_PUBLIC_KEY, public_raw), z85_key(ENV_SECRET_KEY, secret_raw)
    else:
        raise KeySettingError(
            f"{ENV_SERVER_KEY} is set: this producer needs its key pair too, "
            f"{ENV_KEY_FILE} or both {ENV_PUBLIC_KEY} and {ENV_SECRET_KEY} (see clearml-relay keygen)"
        )
    return CurveKeys(server=server, public=public, secret=secret)
