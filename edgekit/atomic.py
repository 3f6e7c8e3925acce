"""Write artifacts all-or-nothing: into a temporary path beside the destination, renamed at the end."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgekit.errors import EdgekitError


def check_destination(dest: Path, force: bool) -> None:
    """Refuse an existing ``dest`` without ``force`` and an unwritable parent, before any work starts."""
    if dest.exists() and not force:
        raise EdgekitError(f"output {dest} already exists", "pass --force to overwrite it, or choose another -o")
    parent = dest.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgekitError(f"cannot create output directory {parent} ({exc.strerror})",
                               "choose a writable -o") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgekitError(f"output directory {parent} is not writable", "choose a writable -o")


@contextmanager
def atomic_output(dest: Path, force: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``dest``'s directory (a new directory, or a file name for the caller to
    create); on success move it to ``dest``.

    On any exception the temporary path is removed and nothing appears at ``dest``. A full disk
    (ENOSPC) becomes an EdgekitError naming the destination.
    """
    dest = Path(dest)
    check_destination(dest, force)
    prefix = f".{dest.name}.tmp-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
    else:
        # a fresh name the writer creates, not an empty file it would truncate: on ext4, closing a file
        # truncated on open flushes all its data to disk (auto_da_alloc), 2 s for a 2 GB model
        tmp = dest.parent / f"{prefix}{secrets.token_hex(6)}"
    try:
        yield tmp
        if dest.exists():
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            else:
                dest.unlink()
        os.replace(tmp, dest)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise EdgekitError(f"disk full while writing {dest}", "free space or choose another -o") from None
        raise
