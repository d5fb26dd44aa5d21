"""The mesh key: CURVE encryption and authentication for every socket of a mesh.

One CURVE key pair, in one file, is shared by the machines of a mesh (the way a
Wi-Fi password or a WireGuard pre-shared key is): every node's ROUTER serves
with it, every DEALER (peer links, clients, the dashboard) connects with it as
both the server key it expects and its own client key, and a node's ZAP handler
admits only clients proving they hold the same pair. So holding the file is
membership: traffic is encrypted, a process without the file cannot handshake,
and one with another mesh's file is refused. Why one shared pair rather than a
pair per node plus allow-lists: a dialling node must know the server key of the
node it dials before it connects, and seed endpoints carry no key; one file per
mesh keeps `peers = [...]` and `--connect` as they are. Losing the file to
someone means making a new one (`zmqllm keys new`) and copying it again.

The file is ZeroMQ's own secret-certificate format (`zmq.auth.load_certificate`
reads it), created with mode 0600.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

ENV_VAR = "ZMQLLM_MESH_KEY"
"""Where clients (and daemons, as the config key `mesh_key`) find the key file."""


class KeyFileError(Exception):
    """A mesh key file that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class MeshKey:
    public: bytes  # Z85, 40 characters
    secret: bytes
    path: str = ""

    def serve(self, sock: zmq.Socket) -> None:
        """Make a ROUTER a CURVE server (before it binds)."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)

    def dial(self, sock: zmq.Socket) -> None:
        """Make a DEALER a CURVE client of a node holding the same key (before it connects)."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)

    def admit(self, ctx: zmq.Context) -> AsyncioAuthenticator:
        """Start the ZAP handler on `ctx` (on the running loop), admitting only
        clients holding this key. Start it before the ROUTER binds: without a
        handler, libzmq lets any CURVE client in. Call `.stop()` when done."""
        authenticator = _Admission(ctx)
        authenticator.start()
        authenticator.configure_curve_callback("*", credentials_provider=_SameKey(self.public))
        return authenticator


class _Admission(AsyncioAuthenticator):
    def stop(self) -> None:
        if self.zap_socket is not None:
            self.zap_socket.setsockopt(zmq.LINGER, 0)  # an unsent reply must not hold up ctx.term()
        super().stop()


class _SameKey:
    def __init__(self, public: bytes) -> None:
        self.public = public

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.public


HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
"""Socket monitor events of a connection refused at the security handshake."""


def handshake_failure(event: int, key: MeshKey | None) -> str:
    """Why a handshake failed, for a user. Only this side's key is certain: a
    mechanism mismatch can also end as a failure without detail when the other
    side hangs up first."""
    if key is None:  # or something else than a zmqllm node answers there (an SSH server's banner, say)
        return ("it has a mesh key and this side has none (daemons: mesh_key or --mesh-key; clients: "
                "ZMQLLM_MESH_KEY or zmqllm --mesh-key FILE COMMAND), unless it is not a zmqllm node at all")
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return f"it has no mesh key and this side has one ({key.path}): give it the same key file"
    return "its mesh key is not this side's (copy the same key file to every machine)"


def create(path: str | os.PathLike[str]) -> MeshKey:
    """Write a new key pair to `path` (mode 0600; never over an existing file)."""
    target = Path(path).expanduser()
    if target.exists():
        raise KeyFileError(f"{target} already exists: not overwriting a mesh key (remove it first)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise KeyFileError(f"cannot create {target.parent}: {exc.strerror}") from None
    if not target.parent.is_dir():
        raise KeyFileError(f"{target.parent} is not a directory")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        _, secret_file = zmq.auth.create_certificates(tmp, "mesh")
        os.chmod(secret_file, 0o600)
        try:
            os.link(secret_file, target)  # atomic, and fails rather than replace a file created meanwhile
        except FileExistsError:
            raise KeyFileError(f"{target} already exists: not overwriting a mesh key") from None
    return load(target)


def load(path: str | os.PathLike[str]) -> MeshKey:
    """Read a mesh key file. Raises `KeyFileError` saying what is wrong."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise KeyFileError(f"mesh key {source}: no such file (create one with: zmqllm keys new {source})")
    try:
        public, secret = zmq.auth.load_certificate(source)
    except (OSError, ValueError, KeyError) as exc:
        raise KeyFileError(f"mesh key {source}: not a key file ({exc})") from None
    if public is None or secret is None or len(public) != 40 or len(secret) != 40:
        raise KeyFileError(f"mesh key {source}: holds no secret key (a mesh key file has both halves; "
                           "create one with zmqllm keys new)")
    return MeshKey(public, secret, str(source))


def too_open(path: str | os.PathLike[str]) -> bool:
    """Whether others than the owner may read the key file."""
    return bool(Path(path).expanduser().stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def from_env(env: dict[str, str] | None = None) -> MeshKey | None:
    """The key named by `ZMQLLM_MESH_KEY`, or None when it is unset or empty."""
    value = (os.environ if env is None else env).get(ENV_VAR, "")
    return load(value) if value else None


__all__ = ["ENV_VAR", "HANDSHAKE_FAILED", "handshake_failure", "KeyFileError", "MeshKey", "create", "from_env", "load", "too_open"]
