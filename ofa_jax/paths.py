"""Paths that may be local or in an object store (gs://bucket/...), read and written through etils.epath."""

import os
import re
import socket

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names an object in a store (gs://bucket/..., s3://...) rather than a local file."""
    return re.match(r'[a-z][a-z0-9+.-]*://', os.fspath(path)) is not None


def resolved(path: str | os.PathLike) -> epath.Path:
    """`path` for reading and writing through etils.epath (and orbax): a local one made absolute, a remote one
    (gs://bucket/...) left as it is, never turned into a local directory."""
    return epath.Path(path) if is_remote(path) else epath.Path(path).expanduser().resolve()


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Writes `path` so that no reader, and no other host writing it at the same time, sees it half written: a local
    file through a file of this process's own, renamed; an object in one upload (an object store has no rename)."""
    path = epath.Path(path)
    if is_remote(path):
        path.write_bytes(data)
        return
    partial = path.with_name(f'{path.name}.{socket.gethostname()}.{os.getpid()}.tmp')
    try:
        partial.write_bytes(data)
        partial.replace(path)
    finally:
        if partial.exists():
            partial.unlink()
