"""nbgateway.atomicfile: modes under any umask, the old file kept and no
temporary file left when a write fails midway, no torn file under
concurrent writers."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading

import pytest

from nbgateway import atomicfile
from nbgateway.atomicfile import write_atomic


@contextlib.contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_and_replaces(tmp_path):
    p = tmp_path / "f"
    write_atomic(str(p), b"one")
    assert p.read_bytes() == b"one"
    write_atomic(str(p), b"two" * 100_000)
    assert p.read_bytes() == b"two" * 100_000
    write_atomic(str(p), b"")
    assert p.read_bytes() == b""
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("mask", [0o000, 0o002, 0o022, 0o077, 0o277])
@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_mode_is_mode_less_umask_or_exact(tmp_path, mask, mode):
    with umask(mask):
        write_atomic(str(tmp_path / "masked"), b"x", mode)
        write_atomic(str(tmp_path / "exact"), b"x", mode, exact_mode=True)
    assert mode_of(tmp_path / "masked") == mode & ~mask
    assert mode_of(tmp_path / "exact") == mode
    assert (tmp_path / "masked").read_bytes() == b"x"  # written even when the mask drops u+w


def test_replacing_a_wider_file_narrows_it(tmp_path):
    p = tmp_path / "key"
    p.write_bytes(b"old")
    os.chmod(p, 0o666)
    with umask(0):
        write_atomic(str(p), b"secret", 0o600)
    assert mode_of(p) == 0o600 and p.read_bytes() == b"secret"


@pytest.mark.parametrize("exact", [False, True])
def test_a_secret_is_never_readable_by_others_even_for_a_moment(tmp_path, monkeypatch, exact):
    seen: list[int] = []
    real_write, real_fsync = os.write, os.fsync

    def spy(fd):
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))

    monkeypatch.setattr(atomicfile.os, "write", lambda fd, b: (spy(fd), real_write(fd, b))[1])
    monkeypatch.setattr(atomicfile.os, "fsync", lambda fd: (spy(fd), real_fsync(fd))[1])
    with umask(0):  # the most permissive umask
        write_atomic(str(tmp_path / "key"), b"secret", 0o600, exact_mode=exact)
    assert seen and all(m & 0o077 == 0 for m in seen), [oct(m) for m in seen]


def _fail_on(monkeypatch, name: str, when=lambda *a: True):
    real = getattr(os, name)

    def failing(*args):
        if when(*args):
            raise OSError(errno.EIO, f"{name} failed")
        return real(*args)

    monkeypatch.setattr(atomicfile.os, name, failing)


@pytest.mark.parametrize("where", ["open", "fchmod", "write", "fsync", "close", "replace"])
def test_a_failure_midway_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, where):
    p = tmp_path / "key"
    write_atomic(str(p), b"old", 0o600)
    if where == "write":  # fail after a first partial write
        real_write, calls = os.write, []

        def partial(fd, b):
            calls.append(1)
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "disk full")
            return real_write(fd, bytes(b[:3]))

        monkeypatch.setattr(atomicfile.os, "write", partial)
    elif where == "close":
        real_close = os.close

        def close_then_fail(fd):
            real_close(fd)
            raise OSError(errno.EIO, "close failed")

        monkeypatch.setattr(atomicfile.os, "close", close_then_fail)
    elif where == "fsync":  # the file's fsync, not the directory's (never reached)
        _fail_on(monkeypatch, "fsync", lambda fd: stat.S_ISREG(os.fstat(fd).st_mode))
    else:
        _fail_on(monkeypatch, where)
    with pytest.raises(OSError):
        write_atomic(str(p), b"new content", 0o600, exact_mode=True)
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["key"]


def test_an_interrupt_midway_also_cleans_up(tmp_path, monkeypatch):
    p = tmp_path / "f"
    p.write_bytes(b"old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomicfile.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(str(p), b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


def test_missing_directory_is_an_error_and_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(str(tmp_path / "nope" / "f"), b"x")
    assert os.listdir(tmp_path) == []


def test_a_directory_target_is_refused_and_cleaned_up(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "inside").write_bytes(b"kept")
    with pytest.raises(OSError):
        write_atomic(str(tmp_path / "d"), b"x")
    assert sorted(os.listdir(tmp_path)) == ["d"]
    assert (tmp_path / "d" / "inside").read_bytes() == b"kept"


def test_the_temp_file_is_beside_the_target_and_hidden(tmp_path, monkeypatch):
    created: list[str] = []
    real_open = os.open

    def spy(path, flags, mode=0o777):
        created.append(path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(atomicfile.os, "open", spy)
    write_atomic(str(tmp_path / ("n" * 255)), b"x")
    tmp = created[0]
    assert os.path.dirname(tmp) == str(tmp_path)
    assert os.path.basename(tmp).startswith(".") and len(os.path.basename(tmp)) <= 255
    assert created[1] == str(tmp_path)  # then the directory, for its fsync


def test_an_existing_temp_name_is_never_reused(tmp_path, monkeypatch):
    names = iter([str(tmp_path / ".taken"), str(tmp_path / ".taken"), str(tmp_path / ".free")])
    monkeypatch.setattr(atomicfile, "temp_path", lambda path: next(names))
    (tmp_path / ".taken").write_bytes(b"someone else's")
    write_atomic(str(tmp_path / "f"), b"x")
    assert (tmp_path / ".taken").read_bytes() == b"someone else's"
    assert (tmp_path / "f").read_bytes() == b"x"
    names = iter([str(tmp_path / ".taken")] * atomicfile.TEMP_ATTEMPTS)
    with pytest.raises(FileExistsError):
        write_atomic(str(tmp_path / "f"), b"y")
    assert (tmp_path / "f").read_bytes() == b"x"


def test_a_symlinked_temp_name_is_not_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    os.symlink(victim, tmp_path / ".link")
    names = iter([str(tmp_path / ".link"), str(tmp_path / ".free")])
    monkeypatch.setattr(atomicfile, "temp_path", lambda path: next(names))
    write_atomic(str(tmp_path / "f"), b"x")
    assert victim.read_bytes() == b"untouched" and (tmp_path / "f").read_bytes() == b"x"


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOTSUP, errno.EACCES])
def test_a_directory_that_cannot_be_fsynced_is_skipped(tmp_path, monkeypatch, err):
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(err, "no")
        real_fsync(fd)

    monkeypatch.setattr(atomicfile.os, "fsync", fsync)
    write_atomic(str(tmp_path / "f"), b"x")
    assert (tmp_path / "f").read_bytes() == b"x"


def test_a_directory_fsync_io_error_propagates_after_the_rename(tmp_path, monkeypatch):
    _fail_on(monkeypatch, "fsync", lambda fd: stat.S_ISDIR(os.fstat(fd).st_mode))
    with pytest.raises(OSError) as e:
        write_atomic(str(tmp_path / "f"), b"x")
    assert e.value.errno == errno.EIO
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == b"x" and os.listdir(tmp_path) == ["f"]


def test_concurrent_writers_never_leave_a_torn_file(tmp_path):
    p = tmp_path / "f"
    contents = [bytes([65 + i]) * (256 * 1024 + i) for i in range(4)]
    write_atomic(str(p), contents[0])
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def writer(i: int) -> None:
        try:
            for _ in range(15):
                write_atomic(str(p), contents[i])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader() -> None:
        while not stop.is_set():
            data = p.read_bytes()
            reads[0] += 1
            if data not in contents:
                errors.append(AssertionError(f"torn read: {len(data)} bytes"))
                return

    r = threading.Thread(target=reader)
    r.start()
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    r.join()
    assert errors == []
    assert reads[0] > 0 and p.read_bytes() in contents
    assert os.listdir(tmp_path) == ["f"]
