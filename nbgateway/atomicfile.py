"""Replace a file atomically and durably, with its final mode from creation.

:func:`write_atomic` is the one way nbgateway writes the files it keeps
(private keys, ACME account data, certificates, the management admin token,
the CA certificate the CLI downloads):

* the data goes to a temporary file created in the target's directory (so the
  rename stays on one filesystem) with ``O_CREAT | O_EXCL`` and the final mode
  passed to ``open``: the process umask can only remove bits from it, so a
  secret is never readable by others, not even for a moment; each write gets
  its own random temporary name, so concurrent writers never share one;
* the data is written in full and fsync'd, then renamed over the target
  (``os.replace``): a reader sees the old file or the new one, never a torn
  one; then the directory is fsync'd so the rename survives a crash;
* any failure before the rename removes the temporary file and leaves the old
  target as it was, and the error propagates (fail closed).

The final mode is ``mode`` less the umask (what ``open`` gives, the usual
rule for files a user asks for), or exactly ``mode`` with ``exact_mode``
(``fchmod``, not subject to the umask) where the file must be readable as
``mode`` says whatever the umask.  Neither is ever wider than ``mode``.

It is a ground-floor module (``tests/test_layering.py``): it imports nothing
of nbgateway, and acme, management, service and tls all use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

#: how many random temporary names to try before giving up (each is 64 bits)
TEMP_ATTEMPTS = 8

#: the temporary file's open flags: a new file only, never through a link
_CREATE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
           | getattr(os, "O_NOFOLLOW", 0))

#: errors of a directory fsync that mean "not supported here", not "failed"
_NO_DIR_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES,
                           errno.EPERM, errno.EISDIR, errno.EBADF})


def temp_path(path: str) -> str:
    """A fresh temporary name beside ``path``: hidden, with the target's
    name (shortened to fit the 255-byte name limit) and a random part."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name[:200]}.{secrets.token_hex(8)}.tmp")


def write_atomic(path: str, data: bytes, mode: int = 0o600, *,
                 exact_mode: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the file's mode
    is ``mode`` less the umask, or exactly ``mode`` with ``exact_mode``.  On
    any error the old ``path`` is untouched and no temporary file is left."""
    fd, tmp = _create(path, mode)
    try:
        try:
            if exact_mode:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def write_secret_output(path: str, data: bytes) -> None:
    """Write secret ``data`` to an output path a user named (a peer's wg-quick
    config, its QR code; both hold the peer's private key): a regular file (or
    none yet) is replaced atomically with mode 0600 less the umask, so a file
    left readable by others before is narrowed; anything else (``/dev/stdout``,
    a pipe) is written in place, there is nothing to replace."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        regular = True
    if regular:
        write_atomic(path, data, 0o600)
        return
    with open(path, "wb") as f:
        f.write(data)


def _create(path: str, mode: int) -> tuple[int, str]:
    for _ in range(TEMP_ATTEMPTS):
        tmp = temp_path(path)
        try:
            return os.open(tmp, _CREATE, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name beside the file", path)


def fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable; a filesystem or platform that
    cannot fsync a directory (or a directory this process may not open) is
    skipped, any other error (EIO) propagates."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        if e.errno in _NO_DIR_FSYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)
