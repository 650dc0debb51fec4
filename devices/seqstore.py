"""Per-device sequence numbers that never repeat, even across a crash.

A reading's ``(device_id, seq)`` is its identity downstream (dedup, proofs), so a restarted
simulator must continue above every seq it ever used. Writing the counter after every reading
would cost an fsync per reading; instead a device *reserves* a block: the file records the first
seq not yet reserved, and is rewritten (atomically, fsync'd) before the block runs out. After a
crash the device resumes at the reserved mark, skipping at most one block; a clean ``close``
records the exact next seq so a normal restart leaves no gap.

The fsync must not stall the simulator: one process runs thousands of devices on one event loop,
and a profile of 1,000 devices showed 3,000 synchronous fsyncs (about 20 s of a 60 s run on a busy
disk) blocking every device. So the next block is reserved *ahead*, off the loop
(:meth:`SeqCounter.renew` in an executor, asked for by :meth:`wants_renewal` when half the block
is used), and ``take`` writes synchronously only if that has not landed in time.

A fleet reserves every device's first block when it starts and records every exact mark when it
stops: one fsync per file there was 10,000 fsyncs for 5,000 devices, a quarter of the simulator's
samples in a profile (docs/PERFORMANCE.md, "Device simulator: per-device costs").
:func:`renew_all` and :func:`close_all` write all the files and then make them durable together
with one ``syncfs`` per directory (which also covers the renames, which the one-file path leaves
to the journal), publishing a new mark only after that returned, so the crash rule is unchanged.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from vitalchain.config import Settings

DEFAULT_BLOCK = 64

_LIBC = ctypes.CDLL(None, use_errno=True)
_SYNCFS = getattr(_LIBC, "syncfs", None)  # Linux; elsewhere os.sync() (every file system)


def seq_dir(settings: Settings) -> Path:
    return settings.state_dir / "devices" / "seq"


class SeqCounter:
    """The seq source of one device, backed by ``<state_dir>/devices/seq/<device_id>.json``."""

    def __init__(self, path: Path, block: int = DEFAULT_BLOCK) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        self.path = path
        self.block = block
        self._next = self._read()
        self._reserved = self._next
        self._lock = threading.Lock()  # one writer of the file at a time (loop or executor)
        self._renewing = False
        self._closed = False

    @classmethod
    def for_device(cls, settings: Settings, device_id: str, block: int = DEFAULT_BLOCK) -> SeqCounter:
        return cls(seq_dir(settings) / f"{device_id}.json", block)

    def _read(self) -> int:
        if not self.path.is_file():
            return 0
        try:
            value = json.loads(self.path.read_text())["next_seq"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path} is corrupt ({exc}); refusing to reuse seq numbers") from exc
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{self.path}: next_seq must be a non-negative integer")
        return value

    def _write(self, value: int, fsync: bool = True) -> None:
        """Replace the file with ``value`` atomically; durable on return only with ``fsync``
        (the fleet-wide writers sync the directory once instead)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, json.dumps({"next_seq": value}).encode())
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    @property
    def peek(self) -> int:
        """The seq the next call to ``take`` returns."""
        return self._next

    def take(self) -> int:
        if self._next >= self._reserved:  # the block ran out before a renewal landed
            with self._lock:
                if self._next >= self._reserved:
                    self._write(self._next + self.block)
                    self._reserved = self._next + self.block
        value = self._next
        self._next += 1
        return value

    def wants_renewal(self) -> bool:
        """True once (until :meth:`renew` ran) when half the reserved block is used."""
        if self._renewing or self._closed or self._reserved - self._next > self.block // 2:
            return False
        self._renewing = True
        return True

    def renew(self) -> None:
        """Reserve the next block (fsync'd). Thread-safe: run it in an executor."""
        try:
            with self._lock:
                if not self._closed:
                    target = max(self._reserved, self._next) + self.block
                    self._write(target)
                    self._reserved = target  # published only once durable
        finally:
            self._renewing = False

    def close(self) -> None:
        """Record the exact next seq (only ever lowers the mark to what was really used)."""
        with self._lock:
            self._closed = True
            if self._reserved != self._next:
                self._write(self._next)
                self._reserved = self._next


def _sync_dirs(paths: Sequence[Path]) -> None:
    """Make every write and rename under these files' directories durable: one ``syncfs`` per
    directory (its whole file system), or ``os.sync`` where there is no ``syncfs``."""
    for folder in sorted({p.parent for p in paths}):
        if _SYNCFS is None:
            os.sync()
            return
        fd = os.open(folder, os.O_RDONLY)
        try:
            if _SYNCFS(fd) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"syncfs({folder}): {os.strerror(errno)}")
        finally:
            os.close(fd)


def renew_all(counters: Sequence[SeqCounter]) -> None:
    """Reserve the next block of every counter with one sync for all (blocking: run it in an
    executor). No counter uses its new block before the sync returned; if a write fails, none of
    the new marks is published and the error propagates."""
    targets: list[tuple[SeqCounter, int]] = []
    for counter in counters:
        with counter._lock:
            if not counter._closed:
                target = max(counter._reserved, counter._next) + counter.block
                counter._write(target, fsync=False)
                targets.append((counter, target))
    _sync_dirs([c.path for c, _ in targets])
    for counter, target in targets:
        with counter._lock:
            if not counter._closed and target > counter._reserved:
                counter._reserved = target  # published only once durable


def close_all(counters: Sequence[SeqCounter]) -> None:
    """``close`` every counter with one sync for all. A mark only ever goes down here, so until
    the sync returns a crash leaves the higher, reserved one: a gap, never a repeat."""
    written: list[Path] = []
    for counter in counters:
        with counter._lock:
            counter._closed = True
            if counter._reserved != counter._next:
                counter._write(counter._next, fsync=False)
                counter._reserved = counter._next
                written.append(counter.path)
    _sync_dirs(written)
