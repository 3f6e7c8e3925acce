"""GPTQ (Frantar et al. 2022) onto a target format's own grid, layer by layer on calibration data.

Per linear layer: the Hessian H = 2/n Σ x xᵀ of its calibration inputs, damped by ``damp`` x mean(diag H);
the columns are quantized one after another, each column's rounding error fed back into the columns not yet
quantized through the Cholesky factor of H⁻¹, with the lazy block update of the paper (blocks of 128
columns). The grid (``quant.grids``) fixes each group's scale and zero when the group starts (with
``act_order``, columns go in order of decreasing diag H and every group's scale and zero are fixed from the
original weights first: static groups), and its own ``encode`` gives the codes, so the codes GPTQ chose are
the ones the artifact stores and the grid's ``pack`` writes them as that format does.

Written by hand after the paper's Algorithm 1 and the reference gptq.py (IST-DASLab); no CPU library does
GPTQ onto GGML / MatMulNBits / Core ML grids.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import weakref
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

BLOCK_COLUMNS = 128  # the lazy-batch width of the paper
DAMP_RETRIES = (1.0, 10.0, 100.0)  # a non-PD Hessian is retried with 10x and 100x the damping


@dataclass
class Result:
    """GPTQ's codes and block parameters for one weight [out, in], the weight they dequantize to, the error."""

    codes: np.ndarray  # [out, n_blocks, block]
    params: dict[str, np.ndarray]  # the grid's block parameters, [out, n_blocks, 1] each
    dequantized: np.ndarray  # float32 [out, in], what the runtime computes
    err_gptq: float  # ||W X - Ŵ X||² on the calibration inputs
    err_rtn: float  # the same for the grid's round-to-nearest
    damp: float  # the damping that made H positive definite


def _block_params(grid: Any, w: np.ndarray) -> dict[str, np.ndarray]:
    b = grid.block_size
    return grid.block_params(w.reshape(w.shape[0], -1, b))


def _take(params: dict[str, np.ndarray], g: int) -> dict[str, np.ndarray]:
    """Block ``g``'s parameters, shaped [out, 1] to broadcast over one column."""
    return {k: v[:, g, :] for k, v in params.items()}


def output_error(delta: Any, h: Any, n: int, chunk: int = 1024) -> float:
    """||ΔX||² from Δ = W - Ŵ and H = 2/n X Xᵀ: n/2 · tr(Δ H Δᵀ), in float64, a block of rows of Δ and of
    columns of H widened at a time (whole float64 copies of a 1B model's down_proj H and Δ would be 0.7 GB)."""
    import torch

    d = torch.as_tensor(delta)
    total = 0.0
    for j in range(0, d.shape[1], chunk):
        hj = h[:, j:j + chunk].double()
        for r in range(0, d.shape[0], chunk):
            dr = d[r:r + chunk].double()
            total += float(((dr @ hj) * dr[:, j:j + chunk]).sum())
    return n / 2 * total


def _inverse_factor(H: Any, dead: Any, perm: Any, damp: float, name: str) -> tuple[Any, float]:
    """(the upper Cholesky factor of (H + damping)⁻¹ in the column order ``perm``, the damping used), computed
    in one work matrix the size of H (LAPACK in place: the same numbers as with fresh outputs)."""
    import torch

    info = torch.empty((), dtype=torch.int32)
    for factor in DAMP_RETRIES:
        M = H.clone()
        M[dead, dead] = 1
        if perm is not None:
            M = M[perm][:, perm]
        used = damp * factor
        M.diagonal().add_(used * float(torch.mean(torch.diag(M))))
        torch.linalg.cholesky_ex(M, out=(M, info))
        if int(info) == 0:
            torch.cholesky_inverse(M, out=M)
            torch.linalg.cholesky_ex(M, upper=True, out=(M, info))
            if int(info) == 0:
                return M, used
        del M
    raise EdgekitError(f"the Hessian of {name} is not positive definite even with damping "
                       f"{damp * DAMP_RETRIES[-1]:g} x its mean diagonal",
                       "give more (and more varied) calibration text, or raise --damp")


def gptq(w: Any, h: Any, n: int, grid: Any, damp: float = 0.01, act_order: bool = False,
         name: str = "weight") -> Result:
    """GPTQ of ``w`` [out, in] (torch or numpy) with Hessian ``h`` [in, in] from ``n`` calibration tokens."""
    import torch

    if grid.kind != "linear":
        raise EdgekitError(f"gptq needs a linear grid, not {grid.name}", "use --method nf4 for codebook grids")
    W = torch.as_tensor(np.asarray(w, dtype=np.float32)).clone()
    rows, cols = W.shape
    bs = grid.block_size
    if cols % bs:
        raise EdgekitError(f"{grid.name}: block size {bs} does not divide the input dimension {cols} of {name}",
                           "choose a --group-size that divides every linear layer's input dimension")
    H = h.detach().to(torch.float32)  # not changed: the errors below are measured on it
    dead = torch.diag(H) == 0
    W[:, dead] = 0

    perm = invperm = None
    static = None
    if act_order:
        static = _block_params(grid, W.numpy())  # every group fixed before its columns move (static groups)
        diag = torch.diag(H).clone()
        diag[dead] = 1
        perm = torch.argsort(diag, descending=True)
        invperm = torch.argsort(perm)
        W = W[:, perm]
    hinv, used = _inverse_factor(H, dead, perm, damp, name)

    codes = None  # the grid's code dtype, from its first column
    params: dict[str, np.ndarray] | None = static
    dynamic: list[dict[str, np.ndarray]] = []
    width = max(BLOCK_COLUMNS, bs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the column loop is many small ops: thread hand-offs cost more than they save
    try:
        for i1 in range(0, cols, width):
            i2 = min(i1 + width, cols)
            W1 = W[:, i1:i2].clone()
            Err1 = torch.zeros_like(W1)
            Hinv1 = hinv[i1:i2, i1:i2]
            for i in range(i2 - i1):
                col = i1 + i
                if act_order:
                    g = int(perm[col]) // bs
                    p = _take(params, g)
                else:
                    if col % bs == 0:  # the group starts: its scale and zero from the columns as updated so far
                        dynamic.append(_take(_block_params(grid, W1[:, i:i + bs].numpy()), 0))
                    p = dynamic[col // bs]
                wcol = W1[:, i].numpy()[:, None]
                q = grid.encode(wcol, p)
                dq = torch.from_numpy(np.ascontiguousarray(grid.decode(q, p)[:, 0], dtype=np.float32))
                if codes is None:
                    codes = np.zeros((rows, cols), dtype=q.dtype)
                codes[:, col] = q[:, 0]
                W[:, col] = dq  # W's finished columns are read no more: they hold the dequantized weight
                d = Hinv1[i, i]
                err = (W1[:, i] - dq) / d
                W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
                Err1[:, i] = err
            W[:, i2:] -= Err1 @ hinv[i1:i2, i2:]
    finally:
        torch.set_num_threads(threads)

    del hinv
    if act_order:
        codes = codes[:, invperm.numpy()]
        W = W[:, invperm]
    else:
        params = {k: np.stack([d[k] for d in dynamic], axis=1) for k in dynamic[0]}
    dequantized = W.numpy()
    err_gptq, err_rtn = _errors(np.asarray(w, dtype=np.float32), dead.numpy(), dequantized, H, n, grid)
    return Result(codes.reshape(rows, cols // bs, bs), params, dequantized, err_gptq, err_rtn, used)


def _errors(w: np.ndarray, dead: np.ndarray, deq: np.ndarray, h: Any, n: int, grid: Any, chunk: int = 1024
            ) -> tuple[float, float]:
    """(||WX - ŴX||² of ``deq``, the same of the grid's round to nearest), W = ``w`` with its ``dead`` columns
    zeroed, a block of rows at a time (whole copies would be ~0.3 GB beside a 1B model's down_proj)."""
    gptq_err = rtn_err = 0.0
    for r in range(0, w.shape[0], chunk):
        w0 = w[r:r + chunk].copy()
        w0[:, dead] = 0
        p0 = _block_params(grid, w0)
        rtn = grid.decode(grid.encode(w0.reshape(w0.shape[0], -1, grid.block_size), p0), p0).reshape(w0.shape)
        gptq_err += output_error(w0 - deq[r:r + chunk], h, n, chunk)
        rtn_err += output_error(w0 - rtn, h, n, chunk)
    return gptq_err, rtn_err


class Hessians:
    """Running sums Σ x xᵀ per linear; linears fed the same tensor (q/k/v, gate/up) share one."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.count: dict[str, int] = {}
        self.alias: dict[str, str] = {}
        self.done: set[str] = set()  # sums already scaled to H
        self._last: tuple[Any, str] | None = None  # holds the last input so its storage cannot be reused

    def add(self, name: str, x: Any) -> None:
        import torch

        if name in self.alias or x.shape[0] == 0:  # an expert no token of this batch reached
            return
        last = self._last
        if last is not None and last[1] != name and last[0].data_ptr() == x.data_ptr() and last[0].shape == x.shape:
            if name not in self.sums:
                self.alias[name] = last[1]
                return
        x32 = x.to(torch.float32)
        if name not in self.sums:
            self.sums[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32)
            self.count[name] = 0
        self.sums[name].addmm_(x32.t(), x32)
        self.count[name] += int(x.shape[0])
        self._last = (x, name)

    def get(self, name: str) -> tuple[Any, int]:
        """(H = 2/n Σ x xᵀ, n) for ``name`` (None and 0 for an expert no token reached); the sum becomes H in
        place (no second copy), so no token can be added after."""
        src = self.alias.get(name, name)
        if src not in self.sums:
            return None, 0
        n = self.count[src]
        if src not in self.done:
            import torch

            with torch.inference_mode():  # the sums were made in the layer's forward (inference tensors)
                self.sums[src].mul_(2.0 / max(n, 1))
            self.done.add(src)
        return self.sums[src], n

    def clear(self) -> None:
        self.sums.clear()
        self.count.clear()
        self.alias.clear()
        self.done.clear()
        self._last = None


def calibration_hash(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int64).tobytes()).hexdigest()


def _rtn(w: np.ndarray, grid: Any) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    rows, cols = w.shape
    p = _block_params(grid, w)
    q = grid.encode(w.reshape(rows, -1, grid.block_size), p)
    return q, p, grid.decode(q, p).reshape(rows, cols)


def _row_keys(w: np.ndarray) -> list[bytes]:
    w = np.ascontiguousarray(w, dtype=np.float32)
    return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in w]


class Spilled(MutableMapping):
    """name -> (codes, block parameters), held in a temporary directory rather than in memory: a 1B model's
    codes (1 byte per weight) would otherwise pile up to ~1 GB beside the layer being quantized. Removed when
    the mapping is garbage-collected (or at exit)."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.files: dict[str, Path] = {}

    def __setitem__(self, name: str, value: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="edgekit-gptq-"))
            weakref.finalize(self, shutil.rmtree, str(self.dir), True)
        q, p = value
        f = self.files.get(name) or self.dir / f"{len(self.files)}.npz"
        np.savez(f, codes=q, **{f"p_{k}": v for k, v in p.items()})
        self.files[name] = f

    def __getitem__(self, name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with np.load(self.files[name]) as z:
            return z["codes"], {k[2:]: z[k] for k in z.files if k.startswith("p_")}

    def __delitem__(self, name: str) -> None:
        self.files.pop(name).unlink()

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


class GPTQCallback:
    """The layer-by-layer callback: Hessians while observing, GPTQ per stage, the quantized weight put back so
    the next stage and the next layer see it. Keeps codes and block parameters per checkpoint module, and the
    rows of each original weight so a converter's (row-permuted, split or stacked) tensor finds its codes."""

    stages_final = True  # quantize() sets each stage's final weights: the driver may skip the done attention

    def __init__(self, grid: Any, damp: float = 0.01, act_order: bool = False) -> None:
        self.grid, self.damp, self.act_order = grid, damp, act_order
        self.hessians = Hessians()
        self.codes = Spilled()
        self.rows: dict[tuple[int, bytes], tuple[str, int]] = {}
        self.errors: list[dict[str, Any]] = []

    # layerwise.Callback protocol (duck-typed so this module imports without torch)
    def begin_layer(self, ctx: Any) -> None:
        pass

    def end_layer(self, ctx: Any) -> None:
        pass

    def observe(self, lin: Any, x: Any) -> None:
        self.hessians.add(lin.name, x)

    def quantize(self, ctx: Any, stage: Any) -> None:
        for lin in stage.linears:
            w = lin.weight().numpy() if lin.transposed else lin.module.weight.detach().numpy()  # no copy: not changed
            h, n = self.hessians.get(lin.name)
            if h is None or n == 0:  # an expert no calibration token was routed to: nothing to weigh errors by
                q, p, deq = _rtn(w, self.grid)
                self.errors.append({"name": lin.name, "role": lin.role, "layer": lin.layer, "tokens": 0})
            else:
                r = gptq(w, h, n, self.grid, self.damp, self.act_order, name=lin.name)
                q, p, deq = r.codes, r.params, r.dequantized
                self.errors.append({"name": lin.name, "role": lin.role, "layer": lin.layer, "tokens": n,
                                    "err_gptq": r.err_gptq, "err_rtn": r.err_rtn, "damp": r.damp})
            for i, key in enumerate(_row_keys(w)):
                self.rows.setdefault((lin.layer, key), (lin.name, i))
            self.codes[lin.name] = (q, {k: v for k, v in p.items()})
            lin.set_weight(deq)
        self.hessians.clear()
        from quant.layerwise import release_memory

        release_memory()

    def tensor(self, a: np.ndarray, layer: int | None, what: str) -> Any:
        """The QuantizedTensor GPTQ chose for a converter's tensor ``a`` (rows = output features, any order)."""
        a = np.asarray(a, dtype=np.float32)
        shape = a.shape
        rows = a.reshape(-1, shape[-1])
        qs, ps = [], {}
        loaded: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        for key in _row_keys(rows):
            hit = self.rows.get((layer, key))
            if hit is None:
                raise EdgekitError(f"gptq: {what} has a row no calibrated linear layer has", "report this as a bug")
            if hit[0] not in loaded:
                loaded[hit[0]] = self.codes[hit[0]]
            q, p = loaded[hit[0]]
            qs.append(q[hit[1]])
            for k, v in p.items():
                ps.setdefault(k, []).append(v[hit[1]])
        codes = np.stack(qs)
        params = {k: np.stack(v) for k, v in ps.items()}
        return self.grid.pack(codes, params, shape)


def min_tokens(ckpt: Any) -> tuple[int, str]:
    """(the widest linear input dimension, its tensor): H of that layer needs at least that many tokens."""
    from edgekit.roles import LINEAR, role_of

    arch = ckpt.config.get("model_type", "")
    best = (0, "")
    for name, info in ckpt.tensors.items():
        role, layer = role_of(name, arch)
        if role in LINEAR and role != "head" and layer is not None and len(info.shape) >= 2:
            width = int(info.shape[0] if arch == "gpt2" else info.shape[-1])  # Conv1D stores [in, out]
            best = max(best, (width, name))
    return best


def run(model: str, grid: Any, *, calib: str | None = None, samples: int | None = None, seqlen: int | None = None,
        damp: float = 0.01, act_order: bool = False, batch_size: int | None = None, progress: bool = True
        ) -> tuple[GPTQCallback, dict[str, Any]]:
    """GPTQ over every decoder linear of ``model`` on ``grid``; (callback with the codes, manifest info)."""
    from edgekit.checkpoint import open_checkpoint
    from quant import layerwise

    if not damp > 0:
        raise EdgekitError(f"--damp {damp} must be positive", "use e.g. --damp 0.01 (of the mean Hessian diagonal)")
    ckpt = open_checkpoint(model)
    from edgekit import archs

    archs.get(ckpt.config.get("model_type"))
    tokens, info = layerwise.calibration_tokens(ckpt.path, calib, samples or 128, seqlen or 512)
    need, widest = min_tokens(ckpt)
    if tokens.size < need:
        raise EdgekitError(f"gptq needs at least {need} calibration tokens for the Hessian of {widest} "
                           f"({need} inputs); got {tokens.size} ({tokens.shape[0]} x {tokens.shape[1]})",
                           "raise --samples/--seqlen or give a longer --calib text")
    cb = GPTQCallback(grid, damp, act_order)
    layerwise.run(ckpt.path, tokens, cb, batch_size=batch_size, progress=progress)  # type: ignore[arg-type]
    info.update({"tokens_sha256": calibration_hash(tokens)})
    errs = [e for e in cb.errors if "err_gptq" in e]
    summary = {"calibration": info, "damp": damp, "act_order": act_order, "linears": len(cb.errors),
               "max_damp_used": max((e["damp"] for e in errs), default=damp),
               "err_ratio_mean": float(np.mean([e["err_gptq"] / e["err_rtn"] for e in errs if e["err_rtn"] > 0]))
               if errs else None}
    return cb, summary
