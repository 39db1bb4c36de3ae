"""Triton kernels for the Domino head's greedy correction step (Domino paper, section 4.3;
reference-implementations.md section 2, "CUDA graph + Triton").

Kernels
-------
* ``fused_correction_argmax``: ``argmax_v (SiLU(z_part + s_proj) @ W2^T + base_logits)`` without ever
  writing the ``[b, V]`` logits. Stage 1 tiles the vocabulary (``BLOCK_V`` rows of W2 per program,
  the E axis in ``BLOCK_E`` chunks, fp32 accumulation) and writes each tile's max and argmax; stage 2
  reduces the per-tile partials to the global argmax. Ties resolve to the smallest vocabulary index,
  exactly like ``torch.argmax`` (NaN logits are not supported: torch.argmax returns a NaN's index,
  these kernels ignore NaNs).
* ``fused_gru_cell``: the GRU gate math from precomputed ``gi = x W_ih^T`` and ``gh = s W_hh^T``
  (PyTorch gate order [r, z, n], no biases); ``gi`` may be gathered in-kernel from a ``[V, 3G]`` table.
* ``candidate_correction``: the same correction restricted to a per-row list of candidate tokens
  (used by ``fast.FusedRollout.topk_rollout``); it also returns the runner-up value and ``||SiLU(.)||``.

Every load is cast to fp32 right after it (bf16 is otherwise wrong under the CPU interpreter and it
is what we want for accumulation anyway).

On CPU the kernels run only under the Triton interpreter: ``TRITON_INTERPRET=1`` must be set before
``triton`` is imported (``triton.jit`` decides at decoration time); see ``triton_available``.
"""

from __future__ import annotations

import os

import torch

try:  # triton is an optional extra (`pip install .[triton]`)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None

Tensor = torch.Tensor



def triton_available(device) -> bool:
    """True when the kernels can run on ``device`` (a torch.device, a string or a tensor):
    CUDA when triton imports and CUDA is available; CPU only under the interpreter
    (``os.environ["TRITON_INTERPRET"] == "1"``, which must have been set before triton was imported)."""
    if triton is None:
        return False
    if isinstance(device, Tensor):
        device = device.device
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1"
    return False


def _check(device) -> None:
    if not triton_available(device):
        raise RuntimeError(
            f"Triton kernels cannot run on {device}: they need triton plus a CUDA device, or on CPU the "
            "Triton interpreter (TRITON_INTERPRET=1 set before triton is imported)")


if triton is not None:

    _INT64_MAX = tl.constexpr(2**63 - 1)  # jit code may only read constexpr globals

    @triton.jit
    def _correction_partial_kernel(
        z_ptr, s_ptr, w2_ptr, base_ptr, flag_ptr, part_val_ptr, part_idx_ptr,
        V, E,
        stride_z, stride_s, stride_w, stride_base, stride_part,
        HAS_FLAG: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_E: tl.constexpr,
    ):
        """Stage 1, one row per program: grid (b, n_tiles), the row axis first so that the programs
        sharing a W2 tile are scheduled together (L2 reuse when b > 1)."""
        row = tl.program_id(0).to(tl.int64)
        pid_v = tl.program_id(1)
        if HAS_FLAG:  # rows whose flag is 0 need no full pass (topk path): read nothing
            if tl.load(flag_ptr + row) == 0:
                return
        # 64-bit tile base, 32-bit offsets inside the tile (BLOCK_V * stride_w < 2^31): fewer registers
        tile_start = pid_v.to(tl.int64) * BLOCK_V
        w_tile = w2_ptr + tile_start * stride_w
        loc = tl.arange(0, BLOCK_V)
        mask_v = loc < V - tile_start
        acc = tl.zeros([BLOCK_V], dtype=tl.float32)
        for e0 in range(0, E, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            mask_e = offs_e < E
            x = tl.load(z_ptr + row * stride_z + offs_e, mask=mask_e, other=0.0).to(tl.float32)
            x += tl.load(s_ptr + row * stride_s + offs_e, mask=mask_e, other=0.0).to(tl.float32)
            a = x * tl.sigmoid(x)  # SiLU; padded lanes give 0
            w = tl.load(w_tile + loc[:, None] * stride_w + offs_e[None, :],
                        mask=mask_v[:, None] & mask_e[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(w * a[None, :], axis=1)
        base = tl.load(base_ptr + row * stride_base + tile_start + loc, mask=mask_v,
                       other=float("-inf")).to(tl.float32)
        val = tl.where(mask_v, acc + base, float("-inf"))
        best = tl.max(val, axis=0)
        # first (smallest) index among the tile's maxima, like torch.argmax
        first = tl.min(tl.where(mask_v & (val == best), loc, BLOCK_V), axis=0)
        idx = tl.minimum(tile_start + first, V - 1)  # the clamp matters only for a NaN tile
        tl.store(part_val_ptr + row * stride_part + pid_v, best)
        tl.store(part_idx_ptr + row * stride_part + pid_v, idx)

    @triton.jit
    def _correction_partial_dot_kernel(
        z_ptr, s_ptr, w2_ptr, base_ptr, flag_ptr, part_val_ptr, part_idx_ptr,
        B, V, E,
        stride_z, stride_s, stride_w, stride_base, stride_part,
        HAS_FLAG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_E: tl.constexpr,
    ):
        """Stage 1 for larger batches: BLOCK_M (>= 16) rows share each W2 tile through tl.dot
        (fp32 operands, ieee precision, fp32 accumulation); grid (cdiv(b, BLOCK_M), n_tiles)."""
        pid_m = tl.program_id(0)
        pid_v = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < B
        if HAS_FLAG:
            flags = tl.load(flag_ptr + offs_m, mask=mask_m, other=0)
            if tl.max(flags, axis=0) == 0:
                return
        offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
        mask_v = offs_v < V
        rows_m = offs_m.to(tl.int64)
        rows_v = offs_v.to(tl.int64)
        acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
        for e0 in range(0, E, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            mask_e = offs_e < E
            mask_me = mask_m[:, None] & mask_e[None, :]
            x = tl.load(z_ptr + rows_m[:, None] * stride_z + offs_e[None, :], mask=mask_me, other=0.0).to(tl.float32)
            x += tl.load(s_ptr + rows_m[:, None] * stride_s + offs_e[None, :], mask=mask_me, other=0.0).to(tl.float32)
            a = x * tl.sigmoid(x)
            w = tl.load(w2_ptr + rows_v[:, None] * stride_w + offs_e[None, :],
                        mask=mask_v[:, None] & mask_e[None, :], other=0.0).to(tl.float32)
            acc = tl.dot(a, tl.trans(w), acc, input_precision="ieee")
        mask_mv = mask_m[:, None] & mask_v[None, :]
        base = tl.load(base_ptr + rows_m[:, None] * stride_base + rows_v[None, :], mask=mask_mv,
                       other=float("-inf")).to(tl.float32)
        val = tl.where(mask_mv, acc + base, float("-inf"))
        best = tl.max(val, axis=1)  # [BLOCK_M]
        idx = tl.min(tl.where(mask_mv & (val == best[:, None]), rows_v[None, :], _INT64_MAX), axis=1)
        idx = tl.minimum(idx, V - 1)
        tl.store(part_val_ptr + rows_m * stride_part + pid_v, best, mask=mask_m)
        tl.store(part_idx_ptr + rows_m * stride_part + pid_v, idx, mask=mask_m)

    @triton.jit
    def _reduce_argmax_kernel(part_val_ptr, part_idx_ptr, flag_ptr, tok_ptr, best_ptr, T, stride_part,
                              HAS_FLAG: tl.constexpr, BLOCK_T: tl.constexpr):
        """Stage 2: one program per row, the global max over the per-tile partials; among tiles
        holding the max, the smallest token index (the tiles are disjoint index ranges)."""
        row = tl.program_id(0)
        if HAS_FLAG:
            if tl.load(flag_ptr + row) == 0:
                return
        offs = tl.arange(0, BLOCK_T)
        mask = offs < T
        row64 = row.to(tl.int64)
        vals = tl.load(part_val_ptr + row64 * stride_part + offs, mask=mask, other=float("-inf"))
        idxs = tl.load(part_idx_ptr + row64 * stride_part + offs, mask=mask, other=_INT64_MAX)
        best = tl.max(vals, axis=0)
        tok = tl.min(tl.where(mask & (vals == best), idxs, _INT64_MAX), axis=0)
        tl.store(tok_ptr + row, tok)
        tl.store(best_ptr + row, best)

    @triton.jit
    def _candidate_kernel(z_ptr, s_ptr, w2_ptr, base_ptr, cand_ptr,
                          tok_ptr, best_ptr, second_ptr, alpha_ptr,
                          K, E, stride_z, stride_s, stride_w, stride_base, stride_cand,
                          BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr):
        """One program per row: the corrected logits of the row's K candidate tokens only (K rows of
        W2 gathered), their max, the smallest candidate token attaining it, the runner-up value (the
        max over the other candidates; equal to best on a tie) and alpha = ||SiLU(z + s)||_2."""
        row = tl.program_id(0).to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        vocab = tl.load(cand_ptr + row * stride_cand + offs_k, mask=mask_k, other=0).to(tl.int64)
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        sq = tl.zeros([BLOCK_E], dtype=tl.float32)
        for e0 in range(0, E, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            mask_e = offs_e < E
            x = tl.load(z_ptr + row * stride_z + offs_e, mask=mask_e, other=0.0).to(tl.float32)
            x += tl.load(s_ptr + row * stride_s + offs_e, mask=mask_e, other=0.0).to(tl.float32)
            a = x * tl.sigmoid(x)
            sq += a * a
            w = tl.load(w2_ptr + vocab[:, None] * stride_w + offs_e[None, :],
                        mask=mask_k[:, None] & mask_e[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(w * a[None, :], axis=1)
        base = tl.load(base_ptr + row * stride_base + vocab, mask=mask_k, other=float("-inf")).to(tl.float32)
        val = tl.where(mask_k, acc + base, float("-inf"))
        best = tl.max(val, axis=0)
        tok = tl.min(tl.where(mask_k & (val == best), vocab, _INT64_MAX), axis=0)
        tok = tl.minimum(tok, tl.max(vocab, axis=0))  # NaN guard: stay a valid candidate
        second = tl.max(tl.where(mask_k & (vocab != tok), val, float("-inf")), axis=0)
        tl.store(tok_ptr + row, tok)
        tl.store(best_ptr + row, best)
        tl.store(second_ptr + row, second)
        tl.store(alpha_ptr + row, tl.sqrt(tl.sum(sq, axis=0)))

    @triton.jit
    def _gru_cell_kernel(gi_ptr, idx_ptr, gh_ptr, s_ptr, out_ptr, G,
                         stride_gi, stride_gh, stride_s, stride_out,
                         HAS_INDEX: tl.constexpr, BLOCK_G: tl.constexpr):
        """s' = (1 - z) * n + z * s with r = σ(gi_r + gh_r), z = σ(gi_z + gh_z),
        n = tanh(gi_n + r * gh_n) = 2σ(2·) - 1. gi row = gi[idx[row]] when HAS_INDEX (table gather)."""
        row = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        mask = offs < G
        if HAS_INDEX:
            gi_row = tl.load(idx_ptr + row).to(tl.int64)
        else:
            gi_row = row
        gi = gi_ptr + gi_row * stride_gi
        gh = gh_ptr + row * stride_gh
        gi_r = tl.load(gi + offs, mask=mask, other=0.0).to(tl.float32)
        gi_z = tl.load(gi + G + offs, mask=mask, other=0.0).to(tl.float32)
        gi_n = tl.load(gi + 2 * G + offs, mask=mask, other=0.0).to(tl.float32)
        gh_r = tl.load(gh + offs, mask=mask, other=0.0).to(tl.float32)
        gh_z = tl.load(gh + G + offs, mask=mask, other=0.0).to(tl.float32)
        gh_n = tl.load(gh + 2 * G + offs, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + row * stride_s + offs, mask=mask, other=0.0).to(tl.float32)
        r = tl.sigmoid(gi_r + gh_r)
        z = tl.sigmoid(gi_z + gh_z)
        n = 2.0 * tl.sigmoid(2.0 * (gi_n + r * gh_n)) - 1.0
        tl.store(out_ptr + row * stride_out + offs, (1.0 - z) * n + z * s, mask=mask)


def _rows(t: Tensor, name: str, cols: int) -> Tensor:
    """A 2-D view whose last dimension is contiguous (row strides are passed to the kernels)."""
    if t.dim() != 2 or t.shape[1] != cols:
        raise ValueError(f"{name}: expected [b, {cols}], got {tuple(t.shape)}")
    return t if t.stride(1) == 1 else t.contiguous()


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def fused_correction_argmax(z_part: Tensor, s_proj: Tensor, w2: Tensor, base_logits: Tensor, *,
                            block_v: int | None = None, block_e: int | None = None,
                            row_flag: Tensor | None = None, dot_min_batch: int = 16,
                            num_warps: int | None = None) -> "tuple[Tensor, Tensor]":
    """``token[m] = argmax_v (SiLU(z_part[m] + s_proj[m]) @ w2.T + base_logits[m])`` and its value.

    z_part, s_proj [b, E] (any float dtype, read as fp32), w2 [V, E] (fp32/fp16/bf16), base_logits
    [b, V] (any float dtype; a strided view such as ``base[:, i]`` is fine as long as the vocab axis is
    contiguous). Returns (token [b] int64, best value [b] fp32). Two launches: per-vocab-tile
    max/argmax, then the reduction of the tiles. ``row_flag`` (int32 [b]): rows whose flag is 0 are
    skipped entirely (no W2 read) and their outputs are left uninitialised.
    Batches of at least ``dot_min_batch`` rows share each W2 tile through ``tl.dot`` (BLOCK_M 16).
    """
    _check(w2.device)
    V, E = w2.shape
    if w2.stride(1) != 1:
        w2 = w2.contiguous()
    z_part = _rows(z_part, "z_part", E)
    s_proj = _rows(s_proj, "s_proj", E)
    b = z_part.shape[0]
    base_logits = _rows(base_logits, "base_logits", V)
    if s_proj.shape[0] != b or base_logits.shape[0] != b:
        raise ValueError("z_part, s_proj and base_logits must have the same batch size")
    on_gpu = w2.device.type == "cuda"
    block_v = block_v or (512 if on_gpu else 128)
    use_dot = b >= dot_min_batch
    block_m = 16 if use_dot else 1  # BLOCK_M 32 sits at 254 registers on sm_90; 16 at 128
    if block_e is None:
        block_e = 32 if on_gpu else 16
        if use_dot:
            block_e = max(16, min(block_e, 8192 // block_v))
    if block_v & (block_v - 1) or block_e & (block_e - 1):
        raise ValueError(f"block_v and block_e must be powers of two, got {block_v}, {block_e}")
    n_tiles = triton.cdiv(V, block_v)
    dev = w2.device
    part_val = torch.empty(b, n_tiles, dtype=torch.float32, device=dev)
    part_idx = torch.empty(b, n_tiles, dtype=torch.int64, device=dev)
    tok = torch.empty(b, dtype=torch.int64, device=dev)
    best = torch.empty(b, dtype=torch.float32, device=dev)
    has_flag = row_flag is not None
    flag = row_flag.to(torch.int32).contiguous() if has_flag else tok  # dummy pointer when unused
    kw = {} if num_warps is None else {"num_warps": num_warps}
    if on_gpu and num_warps is None:
        kw["num_warps"] = 8 if block_v * block_e * block_m >= 16384 else 4
    strides = (z_part.stride(0), s_proj.stride(0), w2.stride(0), base_logits.stride(0), part_val.stride(0))
    if use_dot:
        _correction_partial_dot_kernel[(triton.cdiv(b, block_m), n_tiles)](
            z_part, s_proj, w2, base_logits, flag, part_val, part_idx, b, V, E, *strides,
            HAS_FLAG=has_flag, BLOCK_M=block_m, BLOCK_V=block_v, BLOCK_E=block_e, **kw)
    else:
        _correction_partial_kernel[(b, n_tiles)](
            z_part, s_proj, w2, base_logits, flag, part_val, part_idx, V, E, *strides,
            HAS_FLAG=has_flag, BLOCK_V=block_v, BLOCK_E=block_e, **kw)
    _reduce_argmax_kernel[(b,)](part_val, part_idx, flag, tok, best, n_tiles, part_val.stride(0),
                                HAS_FLAG=has_flag, BLOCK_T=_pow2(n_tiles))
    return tok, best


def candidate_correction(z_part: Tensor, s_proj: Tensor, w2: Tensor, base_logits: Tensor,
                         candidates: Tensor, *, block_e: int | None = None
                         ) -> "tuple[Tensor, Tensor, Tensor, Tensor]":
    """The correction restricted to ``candidates`` [b, K] (distinct token ids per row).
    Returns (token [b] int64: the smallest candidate id attaining the best corrected logit,
    best [b] fp32, second [b] fp32: the best value over the row's other candidates (-inf when K == 1),
    alpha [b] fp32: ||SiLU(z_part + s_proj)||_2 as computed in-kernel)."""
    _check(w2.device)
    V, E = w2.shape
    if w2.stride(1) != 1:
        w2 = w2.contiguous()
    z_part = _rows(z_part, "z_part", E)
    s_proj = _rows(s_proj, "s_proj", E)
    base_logits = _rows(base_logits, "base_logits", V)
    b, K = candidates.shape
    candidates = candidates if candidates.stride(1) == 1 else candidates.contiguous()
    block_k = _pow2(K)
    block_e = block_e or max(1, min(64, 8192 // block_k))
    block_e = min(_pow2(block_e), _pow2(E))
    dev = w2.device
    tok = torch.empty(b, dtype=torch.int64, device=dev)
    best = torch.empty(b, dtype=torch.float32, device=dev)
    second = torch.empty(b, dtype=torch.float32, device=dev)
    alpha = torch.empty(b, dtype=torch.float32, device=dev)
    _candidate_kernel[(b,)](z_part, s_proj, w2, base_logits, candidates, tok, best, second, alpha,
                            K, E, z_part.stride(0), s_proj.stride(0), w2.stride(0), base_logits.stride(0),
                            candidates.stride(0), BLOCK_K=block_k, BLOCK_E=block_e)
    return tok, best, second, alpha


def fused_gru_cell(gi: Tensor, gh: Tensor, s: Tensor, *, gi_index: Tensor | None = None,
                   out: Tensor | None = None, block_g: int | None = None) -> Tensor:
    """One GRU step from precomputed projections (PyTorch gate order [r, z, n], no biases):
    gi [b, 3G] = x W_ih^T (or, with ``gi_index`` [b], a table [V, 3G] whose row ``gi_index[m]`` is
    gathered in-kernel, any float dtype), gh [b, 3G] = s W_hh^T, s [b, G] -> s_new [b, G] fp32."""
    _check(s.device)
    b, G = s.shape
    s = _rows(s, "s", G)
    gh = _rows(gh, "gh", 3 * G)
    if gi.dim() != 2 or gi.shape[1] != 3 * G:
        raise ValueError(f"gi: expected [*, {3 * G}], got {tuple(gi.shape)}")
    if gi.stride(1) != 1:
        gi = gi.contiguous()
    has_index = gi_index is not None
    if has_index:
        idx = gi_index.reshape(b).contiguous()
    else:
        if gi.shape[0] != b:
            raise ValueError("gi must have one row per batch row when gi_index is not given")
        idx = s  # dummy pointer
    if out is None:
        out = torch.empty(b, G, dtype=torch.float32, device=s.device)
    block_g = block_g or min(1024 if s.device.type == "cuda" else 64, _pow2(G))
    _gru_cell_kernel[(b, triton.cdiv(G, block_g))](gi, idx, gh, s, out, G,
                                                    gi.stride(0), gh.stride(0), s.stride(0), out.stride(0),
                                                    HAS_INDEX=has_index, BLOCK_G=block_g)
    return out
