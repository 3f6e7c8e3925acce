"""edgekit ONNX directories through onnxruntime, with the KV cache held across calls.

The I/O contract is converters/onnx's (optimum's names). Two graph kinds:

* dynamic (``model.onnx`` with symbolic dims): ``present`` = past + new, made by the graph's Concat.
  The present OrtValues are bound straight back as the next call's past (IO binding), so the cache
  never goes through numpy between steps; the Concat inside the graph is the only copy (the exporter's
  output Identity nodes, one more copy each, are removed at load: runtimes/onnxgraph.py), and it is the
  graph's contract. For the CPU provider RMSNorm's square is also respelled at load so onnxruntime fuses each
  norm into one kernel (runtimes/onnxgraph.py square_as_pow).
* static (``--static``): ``model.onnx`` takes C-token chunks, ``decode.onnx`` one token, KV inputs are
  fixed buffers of ``context`` slots and ``present`` holds only the chunk's new K/V. The buffers are
  preallocated numpy arrays bound once as OrtValues (zero-copy on the CPU provider); each step binds
  preallocated small outputs, then the host writes the new K/V at slot = position. A decode step thus
  moves one token's K/V, never the cache. Truncation only shortens the attention mask.

Tokenizer: the ``tokenizers`` library on tokenizer.json; chat template via edgekit.tokenizer.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.tokenizer import read_json
from runtimes.devices import Selection, physical_cores
from runtimes.engine import Engine
from runtimes.hftokenizer import HFTokenizer
from runtimes.onnxgraph import KV_CAPACITY, session_source

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
       "tensor(int32)": np.int32}


def _model_path(path: Path) -> Path:
    return path if path.is_file() else path / "model.onnx"


def is_static(path: Path) -> bool:
    """Whether the export has fixed shapes (read from the graph's inputs, not trusted from names)."""
    import onnx

    model_file = _model_path(path)
    if not model_file.exists():
        raise EdgekitError(f"{path} has no model.onnx", "pass a directory written by edgekit convert --to onnx")
    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as err:
        raise EdgekitError(f"{model_file} is not a valid ONNX model ({type(err).__name__})",
                           "re-create it with edgekit convert --to onnx") from None
    ids = next((i for i in model.graph.input if i.name == "input_ids"), None)
    if ids is None:
        raise EdgekitError(f"{model_file} has no input_ids input", "pass an edgekit / optimum decoder export")
    return all(d.HasField("dim_value") for d in ids.type.tensor_type.shape.dim)


def _runnable_others(proc: Path = Path("/proc")) -> float:
    """Other runnable threads that compete with this one for a CPU right now: the median of a few scans of
    ``proc``'s task states, counting only threads at this process's nice level or above (with the kernel's
    autogroup off, a nice-19 background job takes ~1.5% of a CPU from a nice-0 one, so it must not stop the pool
    from spinning; with autogroup on, nice does not reach across sessions, so every runnable thread counts). Else
    /proc/loadavg's running count (minus this thread), else the 1-minute load average (macOS, Windows)."""
    me = threading.get_native_id()
    try:
        autogroup = (proc / "sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        autogroup = True
    own_nice = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0
    try:
        counts = []
        for _ in range(3):
            count = 0
            for stat in proc.glob("[0-9]*/task/[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                    competing = autogroup or int(fields[16]) <= own_nice
                except (OSError, IndexError, ValueError):
                    continue  # the thread ended while we looked
                if fields[0] == "R" and int(stat.parent.name) != me and competing:
                    count += 1
            counts.append(count)
            time.sleep(0.002)
        if any(proc.glob("[0-9]*/task")):
            return float(sorted(counts)[len(counts) // 2])
    except (OSError, ValueError):
        pass
    try:
        return float(int((proc / "loadavg").read_text().split()[3].split("/")[0]) - 1)
    except (OSError, IndexError, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def spinning(threads: int, cpus: int | None = None, others: float | None = None) -> bool:
    """Whether onnxruntime's pool threads should spin between ops. OMP_WAIT_POLICY=ACTIVE / PASSIVE decides when
    set (read, never set: the same switch OpenMP and llama.cpp obey). Otherwise spin when every pool thread has a
    CPU nobody else wants: a decode step is ~1700 small ops, and waking sleeping threads for each costs ~1/3 of
    the step on an idle machine, while spinning threads on busy CPUs lose 2-3x (measured with
    benchmarks/runtime.py; onnxruntime-genai never spins, a plain onnxruntime loop always does)."""
    policy = os.environ.get("OMP_WAIT_POLICY", "").upper()
    if policy in ("ACTIVE", "PASSIVE"):
        return policy == "ACTIVE"
    cpus = cpus if cpus is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    others = _runnable_others() if others is None else others
    return threads <= cpus - others


def _session(path: Path, selection: Selection, threads: int, spin: bool) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        # the RMSNorm fusion and GroupQueryAttention are onnxruntime's CPU kernels; accelerator providers get the
        # graph as exported
        cpu = set(selection.providers) <= {"CPUExecutionProvider"}
        source, config = session_source(path, fuse_norms=cpu, in_place_kv=cpu)
        for key, value in config.items():
            so.add_session_config_entry(key, value)
        return ort.InferenceSession(source, so, providers=selection.providers)
    except Exception as err:  # onnx / onnxruntime raise their own DecodeError / Fail / InvalidGraph / NoSuchFile types
        raise EdgekitError(f"onnxruntime cannot load {path}: {str(err).splitlines()[0][:200]}",
                           "re-create the directory with edgekit convert --to onnx") from None


class _StaticRunner:
    """One static graph (chunk of ``tokens``) with its inputs and outputs bound to preallocated arrays."""

    def __init__(self, sess: Any, k: np.ndarray, v: np.ndarray) -> None:
        import onnxruntime as ort

        self.sess = sess
        inputs = {i.name: i for i in sess.get_inputs()}
        outputs = {o.name: o for o in sess.get_outputs()}
        self.tokens = int(inputs["input_ids"].shape[1])
        layers, _, kv_heads, context, head_dim = k.shape
        index_type = _NP[inputs["input_ids"].type]
        self.ids = np.zeros((1, self.tokens), index_type)
        self.mask = np.zeros((1, context + self.tokens), _NP[inputs["attention_mask"].type])
        self.pos = np.zeros((1, self.tokens), _NP[inputs["position_ids"].type])
        self.logits = np.zeros(outputs["logits"].shape, _NP[outputs["logits"].type])
        self.present = [(np.zeros((1, kv_heads, self.tokens, head_dim), k.dtype),
                         np.zeros((1, kv_heads, self.tokens, head_dim), k.dtype)) for _ in range(layers)]
        self._keep: list[Any] = []  # OrtValues do not own numpy memory: keep both alive together
        binding = sess.io_binding()

        def bind_in(name: str, arr: np.ndarray) -> None:
            value = ort.OrtValue.ortvalue_from_numpy(arr)
            self._keep.append(value)
            binding.bind_ortvalue_input(name, value)

        def bind_out(name: str, arr: np.ndarray) -> None:
            value = ort.OrtValue.ortvalue_from_numpy(arr)
            self._keep.append(value)
            binding.bind_ortvalue_output(name, value)

        bind_in("input_ids", self.ids)
        bind_in("attention_mask", self.mask)
        bind_in("position_ids", self.pos)
        for i in range(layers):
            bind_in(f"past_key_values.{i}.key", k[i])
            bind_in(f"past_key_values.{i}.value", v[i])
            bind_out(f"present.{i}.key", self.present[i][0])
            bind_out(f"present.{i}.value", self.present[i][1])
        bind_out("logits", self.logits)
        self.binding = binding


class OnnxEngine(Engine):
    kind = "onnx"

    def __init__(self, path: Path, selection: Selection, threads: int | None = None,
                 context: int | None = None) -> None:
        super().__init__()
        directory = path if path.is_dir() else path.parent
        self.path, self.selection = str(path), selection
        self.static = is_static(path)
        tok = HFTokenizer(directory)
        self._tok = tok.tok
        self.bos_token, self.eos_token, self.bos_id = tok.bos_token, tok.eos_token, tok.bos_id
        self.eos_ids, self.chat_template = tok.eos_ids, tok.chat_template
        self.threads = threads or physical_cores()
        self.spinning = spinning(self.threads)  # once: a second session's check would count the first one's pool
        sess = _session(_model_path(path), selection, self.threads, self.spinning)
        inputs = {i.name: i for i in sess.get_inputs()}
        self.layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
        if not self.layers or "logits" not in {o.name for o in sess.get_outputs()}:
            raise EdgekitError(f"{path} is not a decoder with KV cache (no past_key_values inputs / logits output)",
                               "export with edgekit convert --to onnx")
        past = inputs["past_key_values.0.key"]
        self.kv_dtype = _NP[past.type]
        self.vocab_size = int(sess.get_outputs()[0].shape[-1]) if isinstance(sess.get_outputs()[0].shape[-1], int) \
            else self._tok.get_vocab_size()
        kv_heads, head_dim = int(past.shape[1]), int(past.shape[3])
        if self.static:
            slots = int(past.shape[2])
            if context is not None and context != slots:
                raise EdgekitError(f"this static export has a fixed context of {slots} tokens, not {context}",
                                   f"drop --context, or re-export with --static --context {context}")
            self.context_length = slots
            self.k = np.zeros((self.layers, 1, kv_heads, slots, head_dim), self.kv_dtype)
            self.v = np.zeros_like(self.k)
            self._chunk = _StaticRunner(sess, self.k, self.v)
            decode_file = directory / "decode.onnx"
            self._one = _StaticRunner(_session(decode_file, selection, self.threads, self.spinning), self.k, self.v) \
                if decode_file.exists() and path.is_dir() else self._chunk
        else:
            import onnxruntime as ort

            manifest = read_json(directory / "edgekit.json")
            config = read_json(directory / "config.json")
            limit = manifest.get("context_length") or config.get("max_position_embeddings") or 2048
            if context is not None and context > limit:
                raise EdgekitError(f"--context {context} exceeds the model's {limit} positions",
                                   f"pass --context {limit} or less")
            self.context_length = int(context or limit)
            self._sess = sess
            self._index = {n: _NP[inputs[n].type] for n in ("input_ids", "attention_mask", "position_ids")
                           if n in inputs}
            self._ort = ort
            empty = np.zeros((1, kv_heads, 0, head_dim), self.kv_dtype)
            self._empty = empty
            self._past = [ort.OrtValue.ortvalue_from_numpy(empty) for _ in range(2 * self.layers)]
            self._out_names = [o.name for o in sess.get_outputs()]
            self._past_names = [f"past_key_values.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]
            self._present_index = [self._out_names.index(n.replace("past_key_values", "present"))
                                   for n in self._past_names]
            self._logits_index = self._out_names.index("logits")
            # the load-time rewrite (runtimes/onnxgraph.py attention_in_place) names the cache dim this way: past and
            # present are then one buffer per tensor, grown by _reserve, written in place by the graph
            self.in_place = sess.get_outputs()[self._present_index[0]].shape[2] == KV_CAPACITY
            self._logits_dtype = _NP[sess.get_outputs()[self._logits_index].type]
            self._kv: list[np.ndarray] = []
            self._one_logits = np.zeros((1, 1, self.vocab_size), self._logits_dtype)
            self._many_logits = np.empty((1, 0, self.vocab_size), self._logits_dtype)
            self._binding = None

    # -- tokenizer --------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special).ids)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._tok.decode([int(t) for t in tokens], skip_special_tokens=True)

    # -- model ------------------------------------------------------------------------------------
    def _forward(self, tokens: list[int]) -> np.ndarray:
        return (self._forward_static(tokens) if self.static else self._forward_dynamic(tokens))[-1]

    def _forward_all(self, tokens: list[int]) -> np.ndarray:
        return self._forward_static(tokens, every=True) if self.static else self._forward_dynamic(tokens, every=True)

    def _reserve(self, total: int) -> None:
        """Make the in-place K/V buffers hold ``total`` positions: doubled when short (at least min_slots, at most
        the context), the first n_tokens copied over, every buffer bound as both the past input and the present
        output of one persistent IO binding (zero-copy OrtValues over numpy memory the engine owns)."""
        capacity = self._kv[0].shape[2] if self._kv else 0
        if total <= capacity:
            return
        ort, keep = self._ort, self.n_tokens
        capacity = min(self.context_length, max(total, 2 * capacity, self.min_slots))
        kv = []
        for old in self._kv or [self._empty] * len(self._past_names):
            new = np.zeros((*old.shape[:2], capacity, old.shape[3]), old.dtype)
            new[:, :, :keep] = old[:, :, :keep]
            kv.append(new)
        self._kv = kv
        binding = self._sess.io_binding()
        self._kv_values = [ort.OrtValue.ortvalue_from_numpy(a) for a in kv]  # they borrow kv's memory: keep both
        for name, value in zip(self._past_names, self._kv_values, strict=True):
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name.replace("past_key_values", "present"), value)
        self._binding = binding

    def _forward_in_place(self, tokens: list[int], every: bool) -> np.ndarray:
        p, n = self.n_tokens, len(tokens)
        self._reserve(p + n)
        binding = self._binding
        binding.bind_cpu_input("input_ids", np.array([tokens], self._index["input_ids"]))
        # GroupQueryAttention reads the positions in use from the mask's width and sum; every slot past them is
        # neither read nor kept (truncation only shortens the mask)
        binding.bind_cpu_input("attention_mask", np.ones((1, p + n), self._index["attention_mask"]))
        if "position_ids" in self._index:
            binding.bind_cpu_input("position_ids", np.arange(p, p + n, dtype=self._index["position_ids"])[None])
        if n == 1:
            logits = self._one_logits
        else:  # reused: a fresh 50 MB array per 256-token prompt costs its page faults on every prefill
            if self._many_logits.shape[1] < n:
                self._many_logits = np.empty((1, n, self.vocab_size), self._logits_dtype)
            logits = self._many_logits[:, :n]
        binding.bind_ortvalue_output("logits", self._ort.OrtValue.ortvalue_from_numpy(logits))
        self._sess.run_with_iobinding(binding)
        return (logits[0] if every else logits[0, -1:]).astype(np.float32)

    def _forward_dynamic(self, tokens: list[int], every: bool = False) -> np.ndarray:
        if self.in_place:
            return self._forward_in_place(tokens, every)
        p, n = self.n_tokens, len(tokens)
        binding = self._sess.io_binding()
        binding.bind_cpu_input("input_ids", np.array([tokens], self._index["input_ids"]))
        if "attention_mask" in self._index:
            binding.bind_cpu_input("attention_mask", np.ones((1, p + n), self._index["attention_mask"]))
        if "position_ids" in self._index:
            binding.bind_cpu_input("position_ids", np.arange(p, p + n, dtype=self._index["position_ids"])[None])
        for name, value in zip(self._past_names, self._past, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name in self._out_names:  # onnxruntime allocates them: their shapes change every step
            binding.bind_output(name, "cpu")
        self._sess.run_with_iobinding(binding)
        outs = binding.get_outputs()
        self._past = [outs[i] for i in self._present_index]
        logits = outs[self._logits_index].numpy()[0]
        return (logits if every else logits[-1:]).astype(np.float32)

    def _forward_static(self, tokens: list[int], every: bool = False) -> np.ndarray:
        rows = []
        i = 0
        while i < len(tokens):
            runner = self._one if len(tokens) - i == 1 else self._chunk
            m = min(runner.tokens, len(tokens) - i)
            rows.append(self._run_static(runner, tokens[i:i + m], every or i + m == len(tokens)))
            i += m
        return np.concatenate(rows) if every else rows[-1]

    def _run_static(self, r: _StaticRunner, tokens: list[int], keep: bool) -> np.ndarray:
        # _static_pos, not n_tokens: a prefill's earlier chunks are not in the Engine's record yet
        p, m, n = self._static_pos, len(tokens), self.context_length
        r.ids[0, :m] = tokens
        r.ids[0, m:] = 0
        r.mask[0, :p] = 1
        r.mask[0, p:] = 0
        r.mask[0, n:n + m] = 1
        r.pos[0] = np.arange(p, p + r.tokens)
        r.sess.run_with_iobinding(r.binding)
        for layer in range(self.layers):
            self.k[layer][:, :, p:p + m] = r.present[layer][0][:, :, :m]
            self.v[layer][:, :, p:p + m] = r.present[layer][1][:, :, :m]
        self._static_pos = p + m
        return r.logits[0, :m].astype(np.float32) if keep else r.logits[0, m - 1:m]

    _static_pos = 0
    min_slots = 256  # the in-place cache's first size: a chat turn fits, and 30 layers x 2 x 3 heads x 64 x 4 B x 256
    #                  is 12 MB for SmolLM2 fp32, where the model's whole 8192-token window would be 377 MB

    def _truncate(self, n: int) -> None:
        if self.static:
            self._static_pos = n  # slots past n are masked out and overwritten before being read
            return
        if self.in_place:
            return  # the next step's mask ends at n: the slots past it are overwritten before they are read
        ort = self._ort
        self._past = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, :n]))
                      for v in self._past]
