"""Write artifacts all-or-nothing, and replace only what edgekit wrote.

The rules a user can rely on:

* a new artifact is written into a temporary path beside the destination and swapped in only when it
  is complete: the old one is moved aside, the new one renamed in, then the old one deleted (restored
  if the rename fails), so the destination always holds a whole artifact, old or new;
* ``--force`` replaces only an edgekit artifact: a GGUF file, or a directory holding an ``edgekit.json``
  manifest whose files are all the manifest's own (or an empty directory);
* nothing else is ever deleted: not the current directory or any directory above it, not the home
  directory, not the source checkpoint (nor a path inside it or containing it), not a directory or file
  edgekit did not write. Each refusal is one line saying what is there and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgekit.errors import EdgekitError

MANIFEST = "edgekit.json"
GGUF_MAGIC = b"GGUF"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def artifact_kind(path: Path) -> str | None:
    """"gguf" | "directory" when ``path`` is an artifact edgekit may replace, else None."""
    if path.is_symlink():
        return None
    if path.is_file():
        try:
            with path.open("rb") as fh:
                return "gguf" if fh.read(4) == GGUF_MAGIC else None
        except OSError:
            return None
    if not path.is_dir():
        return None
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir() or p.is_symlink()}
    if not present:
        return "directory"  # empty: nothing to lose
    listed = _listed(path)
    return "directory" if listed is not None and present <= listed else None


def _listed(path: Path) -> set[str] | None:
    """The files edgekit's manifest in directory ``path`` lists (an artifact's edgekit.json or a mobile
    bundle's bundle.json), the manifest included; None when neither is there and readable."""
    from edgekit.package.schema import BUNDLE_FILE

    for name in (MANIFEST, BUNDLE_FILE):
        try:
            manifest = json.loads((path / name).read_text(encoding="utf-8"))
            return set(manifest.get("files") or {}) | {name}
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return None


def _foreign(path: Path) -> str:
    """A few names in directory ``path`` that edgekit's manifest does not list, for the refusal message."""
    listed = _listed(path) or set()
    names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                   if (not p.is_dir() or p.is_symlink()) and p.relative_to(path).as_posix() not in listed)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return shown or "files"


def check_destination(dest: Path, force: bool, sources: tuple[str | os.PathLike | None, ...] = ()) -> None:
    """Refuse, before any work starts, a destination edgekit must not write or replace; create its parent.

    ``sources``: the checkpoint (and adapter) being converted, as given; an existing output that is one
    of them, lies inside one or contains one is refused (replacing it would delete the input).
    """
    dest = Path(dest).expanduser()
    full = Path(os.path.abspath(dest))
    if os.path.lexists(full):
        real = full.resolve()
        cwd = Path.cwd().resolve()
        if _inside(cwd, real):
            what = "the current directory" if real == cwd else "a directory above the current one"
            raise EdgekitError(f"output {dest} is {what}; edgekit never replaces it",
                               "choose a new path with -o")
        if real == Path.home().resolve() or real.parent == real:
            raise EdgekitError(f"output {dest} is your home or the root directory; edgekit never replaces it",
                               "choose a new path with -o")
        for source in sources:
            src = Path(source).expanduser().resolve() if source is not None else None
            if src is None or not src.exists():
                continue
            if _inside(real, src) or _inside(src, real):
                how = "is" if real == src else ("is inside" if _inside(real, src) else "contains")
                raise EdgekitError(f"output {dest} {how} the source {src}; replacing it would delete the input",
                                   "choose an -o outside the checkpoint")
        if full.is_symlink():
            raise EdgekitError(f"output {dest} is a symbolic link; edgekit does not replace links",
                               "remove the link yourself or choose another -o")
        kind = artifact_kind(full)
        if kind is None:
            if full.is_dir():
                raise EdgekitError(f"output {dest} is a directory holding files edgekit did not write "
                                   f"({_foreign(full)})", "choose a new path with -o (edgekit will not delete them)")
            raise EdgekitError(f"output {dest} is a file edgekit did not write (not a GGUF)",
                               "choose a new path with -o (edgekit will not delete it)")
        if not force:
            what = "a GGUF file" if kind == "gguf" else "an edgekit artifact directory"
            raise EdgekitError(f"output {dest} already exists ({what})",
                               "pass --force to replace it, or choose another -o")
    parent = full.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgekitError(f"cannot create output directory {parent} ({exc.strerror})",
                               "choose a writable -o") from None
    if not parent.is_dir():
        raise EdgekitError(f"output directory {parent} is not a directory", "choose another -o")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgekitError(f"output directory {parent} is not writable", "choose a writable -o")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def swap_in(new: Path, dest: Path, replaceable: bool = True) -> None:
    """Put the complete ``new`` at ``dest``: move the old one aside, rename the new one in, delete the old;
    if the rename fails the old one is put back. ``replaceable=False`` refuses an existing ``dest`` that is
    not an edgekit artifact (it may have appeared since the destination was checked)."""
    if not os.path.lexists(dest):
        try:
            os.rename(new, dest)  # for directories: refuses a destination that appeared meanwhile, non-empty
            return
        except OSError:
            if not os.path.lexists(dest):
                raise
    if not replaceable and artifact_kind(dest) is None:
        raise EdgekitError(f"output {dest} appeared during the conversion and is not an edgekit artifact",
                           "choose a new path with -o")
    old = dest.with_name(f".{dest.name}.old-{secrets.token_hex(6)}")
    os.rename(dest, old)
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    _remove(old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(dest: Path, force: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``dest``'s directory (a new directory with the umask's permissions, or a
    file name for the caller to create); on success swap it in at ``dest`` (:func:`swap_in`).

    The caller has run :func:`check_destination` once, before any heavy work. On any exception (and on
    SIGTERM / SIGHUP, which the CLI turns into one) the temporary path is removed and ``dest`` is left
    as it was. A full disk (ENOSPC) becomes an EdgekitError naming the destination.
    """
    dest = Path(os.path.abspath(Path(dest).expanduser()))
    prefix = f".{dest.name}.tmp-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; an artifact directory follows the umask
    else:
        # a fresh name the writer creates, not an empty file it would truncate: on ext4, closing a file
        # truncated on open flushes all its data to disk (auto_da_alloc), 2 s for a 2 GB model
        tmp = dest.parent / f"{prefix}{secrets.token_hex(6)}"
    try:
        yield tmp
        if directory:  # library temporaries copied in (mkdtemp 0700, mkstemp 0600) follow the umask as well
            mask = _umask()
            for p in tmp.rglob("*"):
                if not p.is_symlink():
                    p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
        if os.path.lexists(dest) and not force:
            raise EdgekitError(f"output {dest} appeared during the conversion", "pass --force or choose another -o")
        swap_in(tmp, dest, replaceable=False)
    except BaseException as exc:
        _abandon(tmp, dest, exc)
        raise


def _abandon(tmp: Path, dest: Path, exc: BaseException) -> None:
    """Remove the unfinished ``tmp``; a full disk becomes one EdgekitError naming ``dest``."""
    _remove(tmp)
    if isinstance(exc, OSError) and _disk_full(exc, dest.parent):
        raise EdgekitError(f"disk full while writing {dest}", "free space or choose another output") from None


def _disk_full(exc: OSError, directory: Path) -> bool:
    """ENOSPC / EDQUOT, or an errno-less short write (numpy's tofile raises "N requested and M written")
    on a file system with (nearly) no space left."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if exc.errno is None:
        try:
            return shutil.disk_usage(directory).free < 16 << 20
        except OSError:
            return False
    return False


@contextmanager
def temporary_files_in(directory: Path) -> Iterator[Path]:
    """Send libraries' temporary files (tempfile, $TMPDIR) into ``directory/.tmp`` for the block, so they
    are removed with the artifact's temporary directory if the process is stopped (coremltools writes
    its intermediate packages to the system temporary directory)."""
    work = Path(directory) / ".tmp"
    work.mkdir()
    saved_dir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(work)
    os.environ["TMPDIR"] = str(work)
    try:
        yield work
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """A fresh temporary file name beside ``dest`` for the caller to write; renamed over ``dest`` when the block
    ends without error, removed otherwise. For small outputs a user names and re-writes (reports, plots, tables):
    a reader sees the old file or the whole new one, never half of one."""
    dest = Path(os.path.abspath(Path(dest).expanduser()))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{secrets.token_hex(6)}"
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException as exc:
        _abandon(tmp, dest, exc)
        raise


def write_text(dest: Path, text: str) -> Path:
    """``text`` written to ``dest`` all-or-nothing (:func:`atomic_file`)."""
    with atomic_file(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)
