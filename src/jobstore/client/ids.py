"""Client ids: the secret that names a client's jobs, given or kept in a file of its own."""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

from ..errors import ClientError, JobstoreError
from ..records import check_name

# The client id is the capability to a client's jobs under the arbiter's tokens, which name no
# client: 192 random bits, as 32 URL-safe characters (all of them valid in a client id).
CLIENT_ID_BYTES = 24


def new_client_id() -> str:
    """A fresh client id nobody can guess; keep it secret, as it opens the client's jobs."""
    return secrets.token_urlsafe(CLIENT_ID_BYTES)


def load_or_create_client_id(path: str | os.PathLike[str]) -> str:
    """The client id kept in ``path``; on first use a new one is written there with mode 0600.

    Processes racing to create it all get the one that was written first. A file that
    others may read is refused: whoever reads it can read and cancel this client's jobs.
    """
    path = Path(path)
    if path.exists():
        return _read_client_id(path)
    client = new_client_id()
    try:
        # Written in full to a private temporary file, then linked into place: a reader never
        # sees a partial id, and link fails rather than replace an id another process made.
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(client + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(temp, path)
        except FileExistsError:
            return _read_client_id(path)
        finally:
            os.unlink(temp)
    except OSError as exc:
        raise ClientError(
            f"cannot create the client id file {path}: {exc.strerror}; "
            "point client_file at a writable place"
        ) from None
    return client


def _read_client_id(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read the client id file {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ClientError(
            f"the client id file {path} may be read by others (mode {stat.S_IMODE(mode):o}), and "
            f"the id opens this client's jobs: chmod 600 {path}"
        )
    try:
        return check_name("client id", text.strip())
    except JobstoreError as exc:
        raise ClientError(f"the client id file {path} holds no valid id: {exc.message}") from None


def client_id(client: str | None, client_file: str | os.PathLike[str] | None) -> str:
    """The client id a JobClient is given: ``client`` itself, or the one kept in ``client_file``."""
    if client is not None and client_file is not None:
        raise ClientError("give either client or client_file, not both")
    if client is not None:
        return client
    if client_file is None:
        raise ClientError(
            "give a client id, or client_file (a file where a secret one is generated and kept)"
        )
    return load_or_create_client_id(client_file)
