"""The GGUF conversion, start to end: checkpoint -> family jobs -> planned tensors -> file.

Order of work, so that every input problem surfaces before the destination is touched:
1. open the checkpoint (validates weights), describe it (ModelSpec), pick the family, start measuring
   the HF tokenizer (:mod:`hf_tokenizer`, a child process) and hashing the weights (a thread), check
   the destination;
2. plan the tensors from shapes alone (:mod:`stream`), then read the tokenizer (validates the
   pre-tokenizer);
3. write header, metadata and tensors (:func:`stream.write_gguf`), patch in the weights' sha256, rename.
Torch is never imported (it costs 3 s and 225 MB), unless an adapter has to be merged.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import gguf

from converters import default_output
from converters.gguf import archs, hf_tokenizer, tokenizer
from converters.gguf.model import Model
from converters.gguf.stream import plan, write_gguf
from converters.gguf.types import FILE_TYPES, resolve_outtype
from converters.seam import NONE, Seam
from converters.streaming import return_freed_chunks
from edgekit import child, integrity, validate
from edgekit.atomic import check_destination
from edgekit.checkpoint import Checkpoint, open_checkpoint
from edgekit.errors import EdgekitError
from edgekit.spec import from_config
from edgekit.tokenizer import stop_token_ids


def open_model(model: str, adapter: str | None, allow_pickle: bool) -> tuple[Checkpoint, Model]:
    ckpt = open_checkpoint(model, adapter=adapter, allow_pickle=allow_pickle)
    spec = from_config(ckpt.config)
    cls = archs.get(spec)
    return ckpt, cls(spec, ckpt.config, ckpt.names())


class Sha256Later:
    """sha256 of the source weights, hashed on a second thread while tensors are converted.

    The metadata block sits before the tensors, so the value is first written as a unique placeholder of
    the same length and patched in place once the hash is known (hashing 2 GB up front costs ~2 s).
    """

    def __init__(self, ckpt: Checkpoint) -> None:
        self.placeholder = secrets.token_hex(32)
        self.value: str | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(ckpt,), daemon=True)
        self.thread.start()

    def _run(self, ckpt: Checkpoint) -> None:
        try:
            self.value = ckpt.sha256()
        except BaseException as exc:  # re-raised on the main thread in patch()
            self.error = exc

    def patch(self, path: Path, search_bytes: int) -> str:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.value is not None
        patch_placeholder(path, search_bytes, self.placeholder, self.value, "sha256")
        return self.value


def patch_placeholder(path: Path, search_bytes: int, placeholder: str, value: str, what: str) -> None:
    """Overwrite ``placeholder`` (a unique string of the same length as ``value``) in the first
    ``search_bytes`` of the written file: GGUF metadata values known only after the tensors are written."""
    if len(value) != len(placeholder):
        raise ValueError(f"{what}: the value must be as long as its placeholder")
    with path.open("r+b") as fh:
        at = fh.read(search_bytes).find(placeholder.encode())
        if at < 0:
            raise RuntimeError(f"{what} placeholder not found in the GGUF metadata")
        fh.seek(at)
        fh.write(value.encode())


class TokenizerCheckLater:
    """edgekit.tokenizer_check: llama.cpp reads the vocabulary from the written metadata, so the value is
    written as a fixed-width placeholder and patched in place, like :class:`Sha256Later`.

    The check runs while the tensors are written (:meth:`start`), in a child process, on a copy of the file's
    metadata with its tensor count set to 0: llama.cpp's vocab_only load reads the same keys, and neither
    maps nor checks weights that are still being written. A child, because llama.cpp's library and its
    vocabulary (~13 MB) would otherwise stay resident beside the streaming writer, llama-cpp-python points
    fd 1 and 2 at /dev/null while it loads (hiding whatever the converter prints then), and a vocabulary
    llama.cpp aborts on becomes a verdict instead of the converter's death.
    """

    WIDTH = 1024
    _CHILD = ("import json, sys; from pathlib import Path; from edgekit.tokenizer_check import check_gguf; "
              "print(json.dumps(check_gguf(Path(sys.argv[1]), json.load(sys.stdin))))")

    def __init__(self, probe: dict[str, Any]) -> None:
        self.probe = probe
        self.placeholder = secrets.token_hex(16).ljust(self.WIDTH)
        self.record: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def start(self, head: bytes) -> None:
        self.thread = threading.Thread(target=self._run, args=(head,), daemon=True)
        self.thread.start()

    def _run(self, head: bytes) -> None:
        import subprocess
        import sys
        import tempfile

        try:
            with tempfile.TemporaryDirectory(prefix="edgekit-vocab-") as d:
                meta_only = Path(d) / "vocab.gguf"
                meta_only.write_bytes(head[:8] + (0).to_bytes(8, "little") + head[16:])  # n_tensors: 0
                del head
                proc = subprocess.run([sys.executable, "-c", self._CHILD, str(meta_only)], input=json.dumps(self.probe),
                                      capture_output=True, text=True, env=child.env(**child.NO_BLAS_THREADS))
            try:
                self.record = json.loads(proc.stdout)
            except ValueError:
                last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                self.record = {"ok": False, "tokens": 0, "detail": f"llama.cpp's vocabulary check failed: {last[:300]}"}
        except BaseException as exc:  # re-raised on the main thread in patch()
            self.error = exc

    def wait(self) -> None:
        """Until the check has ended (its child process is waited for, its temporary copy removed)."""
        if self.thread is not None:
            self.thread.join()

    def patch(self, path: Path, search_bytes: int) -> dict[str, Any]:
        from edgekit import tokenizer_check

        assert self.thread is not None, "start() runs when the metadata is written"
        self.wait()
        if self.error is not None:
            raise self.error
        assert self.record is not None
        text = tokenizer_check.as_metadata(self.record)
        if len(text) > self.WIDTH:  # keep the verdict, shorten the detail
            short = {**self.record, "detail": str(self.record.get("detail", ""))[:self.WIDTH // 2]}
            text = tokenizer_check.as_metadata(short)[:self.WIDTH]
        patch_placeholder(path, search_bytes, self.placeholder, text.ljust(self.WIDTH), "tokenizer check")
        return self.record


def convert(model: str, output: str | None, *, adapter: str | None, allow_pickle: bool, force: bool,
            progress: bool, outtype: str | None = None, adapter_only: bool = False,
            facts: child.Job[hf_tokenizer.TokenizerFacts] | None = None, seam: Seam = NONE) -> dict[str, Any]:
    """Convert ``model`` (+ merged ``adapter``) to a GGUF file, or ``adapter`` alone with ``adapter_only``.

    ``facts``: the tokenizer measurement, if the caller started it already (it is cancelled on return).
    ``seam``: per-tensor storage types and transforms (:mod:`converters.seam`; a quantizer).
    """
    from edgekit import manifest as mf
    from edgekit.tokenizer import describe

    started = time.perf_counter()
    return_freed_chunks()  # before the vocabulary and the chunk buffers come and go
    if adapter_only and not adapter:
        raise EdgekitError("--adapter-only needs --adapter DIR", "pass the PEFT LoRA adapter directory")
    # with --adapter-only the base tensors are never read (only names and shapes), so merging costs nothing
    ckpt, fam = open_model(model, adapter, allow_pickle)
    pending = facts
    try:
        if not adapter_only:  # present, loadable, ids inside the embedding (llama.cpp refuses more tokens)
            validate.tokenizer_files(ckpt.path, fam.spec.vocab_size)
        if not adapter_only and pending is None:
            tokenizer.check_present(ckpt.path)
            pending = hf_tokenizer.start(ckpt.path)
        qtype = resolve_outtype(outtype, ckpt)
        tag = f"{'lora-' if adapter_only else ''}{qtype.name.lower()}.gguf"
        dest = Path(output).expanduser() if output else default_output(str(ckpt.path), tag)
        check_destination(dest, force, sources=(ckpt.path, adapter))
        summary: dict[str, Any] = {"format": "gguf", "architecture": fam.arch_name, "hf_class": fam.spec.hf_class}
        if pending is None:
            from converters.gguf import lora

            result = lora.write_adapter(ckpt, fam, adapter, dest, force=force, outtype=qtype, progress=progress,
                                        allow_pickle=allow_pickle)
            summary.update(result)
        else:
            sha = Sha256Later(ckpt)
            # while the tokenizer is measured: the plan, the stop ids, and the tokenizer files parsed up to the facts
            planned = plan(fam.jobs(), ckpt, qtype, seam, fam.spec.architecture)
            stops = stop_token_ids(ckpt.path)
            vocab = tokenizer.load(ckpt.path, fam.spec.vocab_size, pending.result)
            facts = pending.result()
            check = TokenizerCheckLater(facts.probe)

            # edgekit.json's fields, as edgekit.* keys; the source hash is patched in when known
            manifest = mf.build(format="gguf", source=str(ckpt.path), source_sha256=sha.placeholder,
                                quant={"method": "none", "outtype": qtype.name.lower()},
                                tokenizer=describe(ckpt.path), chat_template=vocab.chat_template,
                                context_length=fam.spec.context_length, files=[], root=None,
                                adapter=str(ckpt.adapter.path) if ckpt.adapter else adapter,
                                architecture=fam.spec.architecture)

            def metadata(w: gguf.GGUFWriter) -> None:
                general_metadata(w, ckpt, "model", vocab.tokens)
                fam.set_params(w)
                w.add_file_type(FILE_TYPES[qtype])
                w.add_quantization_version(gguf.GGML_QUANT_VERSION)
                vocab.write(w)
                mf.write_gguf(w, manifest)
                w.add_string(integrity.DATA_KEY, data_placeholder)
                if stops:  # a JSON string, not an array: llama-cpp-python's metadata dict leaves arrays out
                    w.add_string("edgekit.stop_token_ids", json.dumps(stops))
                w.add_string("edgekit.tokenizer_check", check.placeholder)

            data_placeholder = secrets.token_hex(32)

            def finish(path: Path, kv_end: int) -> None:
                check.wait()  # before an error from the source hash can be printed
                sha.patch(path, kv_end)  # also refuses NaN / infinite weights, found while hashing the source
                check.patch(path, kv_end)

            # the data hash (for `edgekit verify`) covers the tensor data and is computed by write_gguf as it writes;
            # the tokenizer check runs on the metadata while the tensors are written
            try:
                result = write_gguf(dest, force, fam.arch_name, planned, ckpt, metadata, progress, finish,
                                    data_hash_placeholder=data_placeholder, header=check.start)
            except BaseException:
                check.wait()
                raise
            summary.update(result)
            summary.update({"tokenizer": vocab.summary(), "chat_template": vocab.chat_template is not None,
                            "source_sha256": sha.value, "stop_token_ids": stops, "tokenizer_check": check.record})
            from edgekit.tokenizer_check import warn

            warn(check.record or {}, dest)
    finally:
        if pending is not None:
            pending.cancel()
    summary.update({"output": str(dest), "outtype": qtype.name.lower(), "adapter": adapter,
                    "adapter_only": adapter_only, "seconds": round(time.perf_counter() - started, 3)})
    return summary


def general_metadata(w: gguf.GGUFWriter, ckpt: Checkpoint, kind: str, tokens: list[str] | None = None) -> None:
    """general.* as llama.cpp writes it: gguf.Metadata from the model card and directory name."""
    total, shared, expert, count = w.get_total_parameter_count()
    meta = gguf.Metadata.load(None, ckpt.path, None, total)
    if meta.name is None:
        meta.name = ckpt.path.name
    meta.name = _avoid_name_quirks(meta.name, tokens)
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, count)
    w.add_type(gguf.GGUFType.MODEL if kind == "model" else gguf.GGUFType.ADAPTER)
    meta.set_gguf_meta_model(w)


def _avoid_name_quirks(name: str, tokens: list[str] | None) -> str:
    """llama.cpp keys a Phi-3 tokenizer fix on general.name containing "phi3"/"phi-3" and then aborts
    loading (unordered_map::at) when the vocabulary lacks Phi-3's "</s>", "<unk>", "<s>", "<|endoftext|>".
    A model so named with another tokenizer gets the name spelled with a space, which llama.cpp ignores."""
    if tokens is None or not any(k in name.lower() for k in ("phi3", "phi-3")):
        return name
    have = set(tokens)
    if all(t in have for t in ("</s>", "<unk>", "<s>", "<|endoftext|>")):
        return name
    return re.sub(r"(?i)(phi)-?(3)", r"\1 \2", name)
