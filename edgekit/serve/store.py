"""The local model store at ``$EDGEKIT_HOME`` (default ``~/.edgekit``), laid out as Ollama's:

* ``blobs/sha256-<hex>``: every file of every artifact, content-addressed, read-only, shared between
  models (two models built from the same GGUF hold one copy);
* ``manifests/<name>/<tag>``: one JSON document per model: the artifact's format, its files as layers
  (path inside the artifact + digest + size), GGUF LoRA adapters, and the Modelfile settings (template,
  system, parameters, messages, license);
* ``cache/<key>/``: directory artifacts (ONNX, Core ML) rebuilt from their layers as hard links to the
  blobs (a copy where the filesystem cannot link), because onnxruntime and Core ML open a directory with
  fixed file names. A single-file artifact (GGUF) is loaded from its blob directly. Cache directories are
  derived data: garbage collection removes those no manifest needs, and they are rebuilt on demand;
* ``tmp/``: conversions in progress (``pull``, ``create FROM ./checkpoint``).

Every write goes to a temporary name in the destination directory and is renamed into place (blobs are
hashed while written, manifests replaced with ``os.replace``), so a crash at any point leaves either the
old state or the new one; what a crash can leave behind is temporary files and unreferenced blobs,
which the garbage collection that runs on every ``rm`` (and ``edgekit rm --prune``) deletes. Writers
and the collector serialise on an exclusive ``flock`` of ``$EDGEKIT_HOME/.lock``; readers need no lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.serve.names import ModelName, parse

MANIFEST_MEDIA_TYPE = "application/vnd.edgekit.manifest.v1+json"
_CHUNK = 8 << 20


class ModelNotFound(EdgekitError):
    """No manifest for the name."""


class ModelDamaged(EdgekitError):
    """The manifest names a blob that is not in the store (deleted or never finished)."""


def home() -> Path:
    """``$EDGEKIT_HOME`` or ``~/.edgekit``."""
    return Path(os.environ.get("EDGEKIT_HOME") or Path.home() / ".edgekit").expanduser()


def normalize_digest(digest: object) -> str:
    """``sha256:<hex>`` from ``sha256:<hex>`` or ``sha256-<hex>``; anything else is refused."""
    if isinstance(digest, str):
        algo, _, hexpart = digest.replace("-", ":", 1).partition(":")
        if algo == "sha256" and len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart):
            return f"sha256:{hexpart}"
    raise EdgekitError(f"invalid digest {str(digest)[:80]!r}", "pass sha256:<64 lowercase hex digits>")


def check_layer_path(path: object) -> str:
    """A relative path inside an artifact directory; refuses absolute paths, ``..``, empty parts and NUL."""
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path or len(path) > 512:
        raise EdgekitError(f"invalid file name {str(path)[:80]!r} in the model",
                           "use relative names inside the artifact")
    pure = PurePosixPath(path)
    if pure.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")):
        raise EdgekitError(f"invalid file name {path[:80]!r} in the model", "use relative names inside the artifact")
    return path


@dataclass(frozen=True)
class Layer:
    path: str       # file name inside the artifact ("model.gguf", "model.onnx.data", "model.mlpackage/Manifest.json")
    digest: str     # sha256:<hex>
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest, "size": self.size}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class Store:
    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root else home()
        self._held = threading.local()  # lock depth per thread: lock() is re-entrant within a thread
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.cache = self.root / "cache"
        self.tmp = self.root / "tmp"

    # -- locking and temporary names ---------------------------------------------------------------
    def _ensure(self) -> None:
        try:
            for d in (self.blobs, self.manifests, self.cache, self.tmp):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise EdgekitError(f"cannot create the model store at {self.root} ({err.strerror})",
                               "set EDGEKIT_HOME to a writable directory") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for writers and the garbage collector (released by the kernel if we die)."""
        depth = getattr(self._held, "depth", 0)
        if depth:
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth = depth
            return
        self._ensure()
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._held.depth = 1
            yield
        finally:
            self._held.depth = 0
            os.close(fd)

    @staticmethod
    def _tmp_name() -> str:
        # the pid lets the collector tell a dead writer's leftovers from a live writer's work
        return f".tmp-{os.getpid()}-{secrets.token_hex(6)}"

    def workdir(self) -> Path:
        """A fresh directory under ``tmp/`` for a conversion; the caller removes it (or GC does, once we die)."""
        self._ensure()
        path = self.tmp / self._tmp_name().lstrip(".")
        path.mkdir()
        return path

    # -- blobs -----------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / normalize_digest(digest).replace(":", "-")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def _commit_blob(self, tmp: Path, digest: str) -> Path:
        final = self.blob_path(digest)
        if final.exists():  # shared: the store already holds these bytes
            tmp.unlink(missing_ok=True)
        else:
            os.chmod(tmp, 0o444)  # blobs never change; hard links in cache/ must not be written through
            os.replace(tmp, final)
        return final

    def add_blob_stream(self, chunks: Iterable[bytes], expected: str | None = None) -> Layer:
        """Store the bytes of ``chunks``; with ``expected``, refuse (and keep nothing) if they hash otherwise."""
        self._ensure()
        tmp = self.blobs / self._tmp_name()
        h, size = hashlib.sha256(), 0
        try:
            with tmp.open("xb") as out:
                for chunk in chunks:
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            digest = f"sha256:{h.hexdigest()}"
            if expected is not None and normalize_digest(expected) != digest:
                raise EdgekitError(f"the uploaded bytes hash to {digest}, not {expected}",
                                   "upload the file whose digest you named")
            self._commit_blob(tmp, digest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Layer("", digest, size)

    def add_blob_file(self, path: Path, move: bool = False, on_bytes: Callable[[int], Any] | None = None) -> Layer:
        """Store the file at ``path`` (copied; with ``move``, renamed when on the same filesystem);
        ``on_bytes(n)`` is told of every block read (progress)."""
        path = Path(path)
        if move:
            h, size = hashlib.sha256(), 0
            with path.open("rb") as fh:
                while block := fh.read(_CHUNK):
                    h.update(block)
                    size += len(block)
                    if on_bytes is not None:
                        on_bytes(len(block))
            digest = f"sha256:{h.hexdigest()}"
            try:
                tmp = self.blobs / self._tmp_name()
                os.replace(path, tmp)
                self._commit_blob(tmp, digest)
                return Layer("", digest, size)
            except OSError:
                pass  # another filesystem: copy below

        def read() -> Iterator[bytes]:
            with path.open("rb") as fh:
                while block := fh.read(_CHUNK):
                    if on_bytes is not None:
                        on_bytes(len(block))
                    yield block

        return self.add_blob_stream(read())

    def add_artifact(self, artifact: Path, move: bool = False,
                     on_bytes: Callable[[int], Any] | None = None) -> list[Layer]:
        """Store every file of an artifact (a file, or a directory walked recursively) as layers."""
        artifact = Path(artifact)
        if artifact.is_file():
            name = artifact.name if artifact.suffix == ".gguf" else "model.gguf"
            layer = self.add_blob_file(artifact, move=move, on_bytes=on_bytes)
            return [Layer(name, layer.digest, layer.size)]
        layers = []
        for f in sorted(p for p in artifact.rglob("*") if p.is_file()):
            rel = f.relative_to(artifact).as_posix()
            if rel.startswith(".") or "/." in rel:
                continue  # editor and OS droppings are not part of the model
            layer = self.add_blob_file(f, move=move, on_bytes=on_bytes)
            layers.append(Layer(check_layer_path(rel), layer.digest, layer.size))
        if not layers:
            raise EdgekitError(f"{artifact} holds no files", "pass an artifact written by edgekit convert")
        return layers

    # -- manifests -------------------------------------------------------------------------------
    def manifest_path(self, name: ModelName | str) -> Path:
        n = name if isinstance(name, ModelName) else parse(name)
        return self.manifests.joinpath(*n.name.split("/"), n.tag)

    def write_manifest(self, name: ModelName | str, manifest: dict[str, Any]) -> str:
        """Atomically (re)place the manifest of ``name``; every blob it names must be in the store.
        Returns the manifest's digest."""
        path = self.manifest_path(name)
        for layer in [*manifest["layers"], *manifest.get("adapters", [])]:
            if not self.has_blob(layer["digest"]):
                raise ModelDamaged(f"blob {layer['digest']} is not in the store", "upload or re-create it")
        data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        clash = path if path.is_dir() else next((p for p in path.parents if p.is_file()), None)
        if clash is not None:  # "a:b" (model a, tag b) and "a/b" (namespace a, model b) share a path
            raise EdgekitError(f"model name {name} collides with another model's name in the store",
                               "choose another name or tag")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / self._tmp_name()
        try:
            with tmp.open("xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def read(self, name: ModelName | str) -> dict[str, Any]:
        """The manifest of ``name`` with ``name`` and ``digest`` added; ModelNotFound if there is none."""
        n = name if isinstance(name, ModelName) else parse(name)
        path = self.manifest_path(n)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ModelNotFound(f"model '{n}' not found", "see edgekit list, or create it with edgekit create / pull") \
                from None
        try:
            manifest = json.loads(data)
            for layer in [*manifest["layers"], *manifest.get("adapters", [])]:
                check_layer_path(layer["path"])
                normalize_digest(layer["digest"])
            manifest.setdefault("config", {})
        except (ValueError, KeyError, TypeError, EdgekitError):
            raise ModelDamaged(f"the manifest of '{n}' is damaged ({path})", f"remove it with edgekit rm {n}") from None
        manifest["name"] = str(n)
        manifest["digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
        manifest["modified_at"] = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).isoformat()
        return manifest

    def names(self) -> list[ModelName]:
        """Every model name with a manifest (temporary files are skipped)."""
        out = []
        if not self.manifests.is_dir():
            return out
        for path in self.manifests.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                rel = path.relative_to(self.manifests).parts
                text = "/".join(rel[:-1]) + ":" + rel[-1]
                with contextlib.suppress(EdgekitError):
                    out.append(parse(text))
        return sorted(out, key=str)

    def list(self) -> list[dict[str, Any]]:
        """Every model's manifest (damaged ones are reported with an ``error`` key instead of skipped)."""
        out = []
        for n in self.names():
            try:
                out.append(self.read(n))
            except ModelDamaged as err:
                out.append({"name": str(n), "error": str(err), "layers": [], "config": {}})
            except ModelNotFound:
                continue  # removed while we listed
        return out

    @staticmethod
    def size(manifest: dict[str, Any]) -> int:
        return sum(int(layer["size"]) for layer in [*manifest["layers"], *manifest.get("adapters", [])])

    def missing_blobs(self, manifest: dict[str, Any]) -> list[str]:
        return [layer["digest"] for layer in [*manifest["layers"], *manifest.get("adapters", [])]
                if not self.has_blob(layer["digest"])]

    def create(self, name: ModelName | str, fmt: str, layers: list[Layer], config: dict[str, Any],
               adapters: list[Layer] = ()) -> dict[str, Any]:
        """Write the manifest of a model whose blobs are already stored; returns it (read back)."""
        n = name if isinstance(name, ModelName) else parse(name)
        manifest = {"schemaVersion": 1, "mediaType": MANIFEST_MEDIA_TYPE, "format": fmt,
                    "layers": [x.as_dict() for x in layers], "adapters": [x.as_dict() for x in adapters],
                    "config": {**config, "created_at": _now()}}
        with self.lock():
            self.write_manifest(n, manifest)
        return self.read(n)

    def create_from_artifact(self, name: ModelName | str, artifact: Path, fmt: str, config: dict[str, Any],
                             adapters: list[Path] = (), move: bool = False, progress: bool = False) -> dict[str, Any]:
        """Store ``artifact`` (and GGUF ``adapters``) as blobs and write the manifest, under the lock so a
        concurrent collector cannot take the new blobs before the manifest names them. ``progress``
        shows a bar of the bytes hashed and copied (a GGUF of several GB takes a while)."""
        bar = None
        if progress:
            from tqdm import tqdm

            root = Path(artifact)
            files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
            total = sum(p.stat().st_size for p in [*files, *map(Path, adapters)])
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="storing", leave=False)
        on_bytes = bar.update if bar is not None else None
        try:
            with self.lock():
                layers = self.add_artifact(artifact, move=move, on_bytes=on_bytes)
                extra = [Layer(f"adapter-{i}.gguf", x.digest, x.size)
                         for i, x in enumerate(self.add_blob_file(Path(a), on_bytes=on_bytes) for a in adapters)]
                return self.create(name, fmt, layers, config, extra)
        finally:
            if bar is not None:
                bar.close()

    def copy(self, source: ModelName | str, dest: ModelName | str) -> dict[str, Any]:
        src = self.read(source)
        d = dest if isinstance(dest, ModelName) else parse(dest)
        manifest = {k: v for k, v in src.items() if k not in ("name", "digest", "modified_at")}
        with self.lock():
            self.write_manifest(d, manifest)
        return self.read(d)

    def remove(self, name: ModelName | str) -> dict[str, Any]:
        """Delete the manifest of ``name`` and every blob no other model uses; returns what was freed."""
        n = name if isinstance(name, ModelName) else parse(name)
        path = self.manifest_path(n)
        with self.lock():
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise ModelNotFound(f"model '{n}' not found", "see edgekit list") from None
            parent = path.parent
            while parent != self.manifests:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent
            return self._gc()

    def gc(self) -> dict[str, Any]:
        """Delete unreferenced blobs, stale cache directories and a dead writer's temporary files."""
        with self.lock():
            return self._gc()

    def _gc(self) -> dict[str, Any]:
        referenced: set[str] = set()
        keys: set[str] = set()
        for n in self.names():
            path = self.manifest_path(n)
            try:
                manifest = json.loads(path.read_bytes())
                layers = [*manifest["layers"], *manifest.get("adapters", [])]
                referenced.update(normalize_digest(x["digest"]).replace(":", "-") for x in layers)
                keys.add(cache_key(manifest["layers"]))
            except (OSError, ValueError, KeyError, TypeError, EdgekitError):
                # unreadable: we cannot tell what it references, so delete no blob this time
                return {"removed_blobs": [], "freed_bytes": 0, "skipped": f"damaged manifest {path}"}
        removed, freed = [], 0
        for blob in self.blobs.iterdir() if self.blobs.is_dir() else ():
            if blob.name.startswith(".tmp-"):
                if not _writer_alive(blob.name):
                    freed += _remove(blob)
            elif blob.name not in referenced:
                freed += _remove(blob)
                removed.append(blob.name.replace("-", ":", 1))
        for entry in self.cache.iterdir() if self.cache.is_dir() else ():
            if entry.name.startswith(".tmp-") and _writer_alive(entry.name):
                continue
            if entry.name not in keys:
                _remove(entry)
        for entry in self.tmp.iterdir() if self.tmp.is_dir() else ():
            if not _writer_alive("." + entry.name):
                _remove(entry)
        for d in self.manifests.rglob(".tmp-*") if self.manifests.is_dir() else ():
            if not _writer_alive(d.name):
                _remove(d)
        return {"removed_blobs": removed, "freed_bytes": freed}

    # -- artifacts ---------------------------------------------------------------------------------
    def artifact(self, manifest: dict[str, Any]) -> Path:
        """A path runtimes.load opens: the blob of a single-file artifact, else the rebuilt directory."""
        missing = self.missing_blobs(manifest)
        if missing:
            name = manifest.get("name")
            raise ModelDamaged(f"model '{name}' is damaged: blob {missing[0]} is missing from the store",
                               f"re-create it (edgekit create / pull), or remove it with edgekit rm {name}")
        layers = manifest["layers"]
        if len(layers) == 1 and manifest.get("format") == "gguf":
            return self.blob_path(layers[0]["digest"])
        key = cache_key(layers)
        final = self.cache / key
        if final.is_dir():
            return final
        self._ensure()
        tmp = self.cache / self._tmp_name()
        try:
            for layer in layers:
                dest = tmp / check_layer_path(layer["path"])
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(self.blob_path(layer["digest"]), dest)
                except OSError:
                    shutil.copyfile(self.blob_path(layer["digest"]), dest)
            try:
                os.rename(tmp, final)
            except OSError:  # built meanwhile by another process: theirs is as good as ours
                if not final.is_dir():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def adapter_paths(self, manifest: dict[str, Any]) -> list[Path]:
        return [self.blob_path(a["digest"]) for a in manifest.get("adapters", [])]


def resolve_artifact(ref: str) -> tuple[str, str | None]:
    """(artifact, GGUF LoRA adapter or None): ``ref`` itself when it is a path that exists, else the store
    model of that name (``edgekit run NAME``); anything else is returned for the runtime to report."""
    from edgekit.serve.names import is_valid

    if Path(ref).expanduser().exists() or not is_valid(ref):
        return ref, None
    store = Store()
    try:
        manifest = store.read(ref)
    except ModelNotFound:
        raise ModelNotFound(f"{ref} is neither a file nor a model in the store ({store.root})",
                            "pass a .gguf file or an artifact directory, or a name from edgekit list") from None
    adapters = store.adapter_paths(manifest)
    return str(store.artifact(manifest)), (str(adapters[0]) if adapters else None)


def cache_key(layers: list[dict[str, Any]]) -> str:
    text = json.dumps(sorted((x["path"], x["digest"]) for x in layers))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _writer_alive(tmp_name: str) -> bool:
    try:
        pid = int(tmp_name.split("-")[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path, ignore_errors=True)
            return size
        size = path.stat().st_size
        path.unlink()
        return size
    except OSError:
        return 0
