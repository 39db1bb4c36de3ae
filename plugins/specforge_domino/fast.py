"""Fast greedy (T=0) rollout of the Domino head: Triton kernels, one CUDA graph per block, and an
exact top-K restricted variant. ``FusedRollout.rollout`` computes the same function as
``head.reference_rollout`` (same tokens, with fp32 weights and table, up to fp32 summation order on
near-exact ties); ``topk_rollout`` and ``CudaGraphRollout`` give exactly ``rollout``'s tokens.

Per block (k drafts, first P = ``pure_draft_prefix_len`` from the base logits alone):

* once per weights (``FusedRollout.__init__``):
  ``gi_table [V, 3G] = embed_weight @ W_ih^T`` (the GRU input projection of every token; a step then
  gathers one row instead of an embedding lookup plus a [3G, H] GEMV), ``w_z = W1[:, :H]``,
  ``w_s = W1[:, H:]`` and ``w_s_hh = [w_s; W_hh]`` ([E+3G, G]) so that ``S @ w_s_hh^T`` gives both the
  correction's state projection and the next GRU step's ``gh`` in one GEMM.
  Memory of the table: ``V * 3G`` elements, i.e. 151936 * 3072 * 4 B = 1.87 GB in fp32 at Qwen3-8B
  shapes. It is therefore stored in the embedding's dtype by default (bf16 on GPU: 0.93 GB), computed in
  fp32 chunk by chunk and cast back to fp32 on gather (inside the GRU kernel).
  Caveat: a bf16 table rounds ``x W_ih^T`` where the reference rounds ``x``; drafts can then differ from
  the fp32 reference on near-ties (losslessness is unaffected: the verifier decides). Pass
  ``table_dtype=torch.float32`` for bit-faithful inputs.
* once per block: ``z_part = hidden @ w_z^T`` for all k positions.
* per step i: ``S_i = GRU(gi_table[prev], gh_i, S_{i-1})`` (Triton), ``[s_proj_i | gh_{i+1}] =
  S_i @ w_s_hh^T`` (one GEMM), then for i >= P the fused correction + argmax over the vocabulary
  (Triton, two-stage reduce); for i < P ``argmax(base_logits[:, i])``.

No host synchronisation inside the loop (no ``.item()``, no branching on tensor values), so the whole
block can be captured in one CUDA graph (``CudaGraphRollout``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .head import DominoHead
from .kernels import _check, candidate_correction, fused_correction_argmax, fused_gru_cell

Tensor = torch.Tensor


class FusedRollout:
    """Precomputed weights plus the Triton-kernel rollout.

    ``weight_dtype`` (default: the head's W2 dtype) is the storage dtype of W2 (read by the kernels,
    cast to fp32 on load); ``gemm_dtype`` (default: ``weight_dtype``) that of ``w_s_hh``, the other weight
    read at every step (the state is cast to it for the GEMM, whose output is cast back to fp32).
    ``w_z`` (read once per block) is kept in fp32. ``table_dtype`` (default: the embedding's dtype) is
    the storage dtype of ``gi_table``.
    """

    def __init__(self, head: DominoHead, embed_weight: Tensor, block_v: int = 512, *,
                 weight_dtype: torch.dtype | None = None, gemm_dtype: torch.dtype | None = None,
                 table_dtype: torch.dtype | None = None,
                 block_e: int | None = None, table_chunk: int = 8192):
        arch = head.arch
        self.arch = arch
        H, G, E, V = arch.hidden_size, arch.gru_hidden_dim, arch.emb_dim, arch.vocab_size
        self.H, self.G, self.E, self.V, self.P = H, G, E, V, arch.pure_draft_prefix_len
        if embed_weight.dim() != 2 or embed_weight.shape[1] != H:
            raise ValueError(f"embed_weight: expected [V, {H}], got {tuple(embed_weight.shape)}")
        self.block_v, self.block_e = block_v, block_e
        dev = head.w2.device
        self.device = dev
        wdt = weight_dtype or head.w2.dtype
        with torch.no_grad():
            w1 = head.w1.detach()
            w_hh = head.prefix_gru.weight_hh_l0.detach()
            w_ih = head.prefix_gru.weight_ih_l0.detach().float()
            self.w_z = w1[:, :H].float().contiguous()  # [E, H]
            gdt = gemm_dtype or wdt
            self.w_s = w1[:, H:].to(gdt).contiguous()  # [E, G]
            self.w_s_hh = torch.cat([w1[:, H:], w_hh], 0).to(gdt).contiguous()  # [E + 3G, G]
            self.w2 = head.w2.detach().to(wdt).contiguous()  # [V, E]
            tdt = table_dtype or embed_weight.dtype
            n_emb = embed_weight.shape[0]
            table = torch.empty(n_emb, 3 * G, dtype=tdt, device=dev)
            for c0 in range(0, n_emb, table_chunk):  # never materialise the fp32 [V, 3G] table at once
                chunk = embed_weight[c0:c0 + table_chunk].to(device=dev, dtype=torch.float32)
                table[c0:c0 + table_chunk] = (chunk @ w_ih.T).to(tdt)
            self.gi_table = table
            # ||W2[v]||_2 of the stored (possibly cast) W2, for the top-K certificate
            norms = torch.empty(V, dtype=torch.float32, device=dev)
            for c0 in range(0, V, 16384):
                norms[c0:c0 + 16384] = self.w2[c0:c0 + 16384].float().norm(dim=1)
            self.w2_row_norm = norms
            self.w2_norm_max = norms.max()  # a 0-dim tensor: no host sync later

    # ------------------------------------------------------------------------------------------
    def _prepare(self, hidden: Tensor, base_logits: Tensor, anchor: Tensor):
        _check(self.device)
        b, k, H = hidden.shape
        if H != self.H or base_logits.shape != (b, k, self.V) or anchor.shape != (b,):
            raise ValueError(f"expected hidden [b, k, {self.H}], base_logits [b, k, {self.V}], anchor [b]; got "
                             f"{tuple(hidden.shape)}, {tuple(base_logits.shape)}, {tuple(anchor.shape)}")
        if base_logits.stride(-1) != 1:
            base_logits = base_logits.contiguous()
        z_all = F.linear(hidden.float(), self.w_z)  # [b, k, E]: every position at once
        return b, k, z_all, base_logits

    def _gru_and_proj(self, i: int, k: int, prev: Tensor, gh: Tensor, state: Tensor):
        """S_i = GRU(gi_table[prev], gh, S_{i-1}); [s_proj_i | gh_{i+1}] = S_i @ [w_s; W_hh]^T."""
        state = fused_gru_cell(self.gi_table, gh, state, gi_index=prev)
        proj = None
        if i >= self.P or i + 1 < k:  # the last prefix-only step needs neither
            proj = F.linear(state.to(self.w_s_hh.dtype), self.w_s_hh).float()  # [b, E + 3G]
            gh = proj[:, self.E:]
        return state, proj, gh

    def rollout(self, hidden: Tensor, base_logits: Tensor, anchor: Tensor) -> Tensor:
        """hidden [b, k, H], base_logits [b, k, V], anchor [b] -> greedy tokens [b, k] (int64),
        the tokens of ``reference_rollout(...)[0]`` (see the module docstring for the dtype caveats)."""
        b, k, z_all, base_logits = self._prepare(hidden, base_logits, anchor)
        E, G = self.E, self.G
        state = torch.zeros(b, G, dtype=torch.float32, device=hidden.device)
        gh = torch.zeros(b, 3 * G, dtype=torch.float32, device=hidden.device)
        prev = anchor.to(torch.int64)
        tokens = torch.empty(b, k, dtype=torch.int64, device=hidden.device)
        for i in range(k):
            state, proj, gh = self._gru_and_proj(i, k, prev, gh, state)
            if i < self.P:
                tok = base_logits[:, i].argmax(-1)
            else:
                tok, _ = fused_correction_argmax(z_all[:, i], proj[:, :E], self.w2, base_logits[:, i],
                                                 block_v=self.block_v, block_e=self.block_e)
            tokens[:, i] = tok
            prev = tok
        return tokens

    def topk_rollout(self, hidden: Tensor, base_logits: Tensor, anchor: Tensor, k_cand: int = 64,
                     bound: str = "global") -> "tuple[Tensor, Tensor]":
        """Exact greedy rollout that reads only the W2 rows of the base top-``k_cand`` tokens, unless a
        row cannot be certified, in which case that row (and only it) takes the full pass.
        Returns (tokens [b, k] int64 — always identical to ``rollout``'s —, fallbacks: a 0-dim int64
        tensor counting the (row, step) pairs that needed the full pass, out of ``b * (k - P)``).

        Certificate. Fix a row and a step; let ``a = SiLU(z_part + s_proj)`` (fp32, E entries), ``C`` the
        candidate set (base top-K), ``d_v = W2[v]·a``, and the exact real value ``r_v = base_v + d_v``.
        Cauchy-Schwarz: ``|d_v| <= ||W2[v]||_2 ||a||_2 = n_v alpha``. Hence for every ``v not in C``:
            r_v <= base_v + n_v alpha <= UB,
        with ``UB = base_(K+1) + N alpha`` (``bound="global"``: ``base_(K+1)`` the largest base logit
        outside C — C is the top-K, so that is the (K+1)-th largest —, ``N = max_v n_v`` precomputed
        once per weights: O(1) work per row), or ``UB = max_{v not in C} (base_v + n_v alpha)``
        (``bound="per_token"``: tighter, costs one pass over the base row and the norms, ~V*(2+4) B).
        Floating point. Any fp32 evaluation of ``d_v`` (any summation order, with or without FMA)
        is within ``gamma_E * sum_e |W2[v,e] a_e| <= gamma_E n_v alpha`` of ``d_v``
        (``gamma_E = E u / (1 - E u)``, ``u = 2^-24``) and the final ``+ base_v`` adds a relative ``u``.
        The candidate kernel and the full kernel may sum in different orders and may evaluate SiLU
        ulps apart, so we only use that each computed value lies within
            delta = rel * N * alpha_up + 2^-20 * max(|c1|, |UB|),   rel = (E + 64) * 2^-23,
        of its exact real value, where ``alpha_up = alpha_computed * (1 + rel)`` >= ||a|| (this is a
        generous bound: the true rounding terms are ``gamma_E n_v alpha`` and ~2u|value|, and tokens
        whose value is far above max(|c1|, |UB|) in magnitude cannot compete, see below).
        Let c1 be the best candidate value (token t: the smallest id attaining it) and c2 the best
        value among the other candidates, both as computed by the candidate kernel. If
            (i)  c1 - c2 > 4 delta   and   (ii) c1 > UB + 4 delta,
        then in the full exact computation (values X_v): X_t >= c1 - 2 delta; every other candidate u
        has X_u <= c2 + 2 delta < c1 - 2 delta <= X_t; every non-candidate v has
        X_v <= r_v + delta <= UB + delta < c1 - 2 delta <= X_t (a v with |X_v| > 2 max(|c1|,|UB|) is
        either far below c1 or would need r_v > UB). So t is the *unique* maximiser of X and
        ``torch.argmax``/the full kernel return t: no tie-breaking question arises. When (i) or (ii) fails
        (including exact ties c1 == c2, c1 == UB, infinities and NaNs, since every comparison with
        them is False) the row falls back to the full kernel, i.e. exactly the ``rollout`` path.
        The fallback runs sync-free: the full kernel is launched every step with a per-row flag and
        the programs of certified rows return before reading W2 (for b >= 16, where rows share W2
        tiles through tl.dot, a 16-row block is skipped only when none of its rows is flagged).
        """
        if bound not in ("global", "per_token"):
            raise ValueError(f"bound must be 'global' or 'per_token', got {bound!r}")
        b, k, z_all, base_logits = self._prepare(hidden, base_logits, anchor)
        E, G, V, P = self.E, self.G, self.V, self.P
        dev = hidden.device
        Kc = max(1, min(int(k_cand), V))
        rel = (E + 64) * 2.0 ** -23
        n_corr = max(0, k - P)
        if n_corr:
            # once per block, in the logits' own dtype (exact: the values are only compared and upcast)
            vals, idx = torch.topk(base_logits[:, P:], min(Kc + 1, V), dim=-1)
            cand = idx[..., :Kc].contiguous()  # [b, k-P, Kc]
            rest = vals[..., Kc].float() if Kc < V else torch.full((b, n_corr), float("-inf"), device=dev)
        state = torch.zeros(b, G, dtype=torch.float32, device=dev)
        gh = torch.zeros(b, 3 * G, dtype=torch.float32, device=dev)
        prev = anchor.to(torch.int64)
        tokens = torch.empty(b, k, dtype=torch.int64, device=dev)
        fallbacks = torch.zeros((), dtype=torch.int64, device=dev)
        for i in range(k):
            state, proj, gh = self._gru_and_proj(i, k, prev, gh, state)
            if i < P:
                tok = base_logits[:, i].argmax(-1)
            else:
                j = i - P
                z, sp, base_i = z_all[:, i], proj[:, :E], base_logits[:, i]
                ctok, c1, c2, alpha = candidate_correction(z, sp, self.w2, base_i, cand[:, j])
                alpha_up = alpha * (1.0 + rel)
                if bound == "global":
                    ub = rest[:, j] + self.w2_norm_max * alpha_up
                else:
                    ub = torch.addcmul(base_i.float(), self.w2_row_norm[None, :], alpha_up[:, None])
                    ub = ub.scatter(-1, cand[:, j], float("-inf")).amax(-1)
                mag = torch.maximum(c1.abs(), torch.where(torch.isfinite(ub), ub.abs(), torch.zeros_like(ub)))
                delta = rel * self.w2_norm_max * alpha_up + 2.0 ** -20 * mag
                certified = (c1 - c2 > 4 * delta) & (c1 > ub + 4 * delta)
                need = ~certified
                ftok, _ = fused_correction_argmax(z, sp, self.w2, base_i, row_flag=need.to(torch.int32),
                                                  block_v=self.block_v, block_e=self.block_e)
                tok = torch.where(need, ftok, ctok)
                fallbacks += need.sum()
            tokens[:, i] = tok
            prev = tok
        return tokens, fallbacks


class CudaGraphRollout:
    """The whole k-step rollout of ``fused`` captured in one ``torch.cuda.CUDAGraph`` (batch and k
    fixed at construction). Static input buffers hold hidden, base_logits and anchor; ``rollout``
    copies the inputs in, replays the graph and returns a clone of the static token buffer.
    With ``k_cand`` the captured rollout is ``topk_rollout`` (``last_fallbacks`` then holds its count).
    """

    def __init__(self, fused: FusedRollout, batch: int, steps: int, device="cuda", *,
                 k_cand: int | None = None, bound: str = "global",
                 hidden_dtype: torch.dtype | None = None, logits_dtype: torch.dtype | None = None,
                 warmup: int = 3):
        if not torch.cuda.is_available():
            raise RuntimeError("CudaGraphRollout needs CUDA (torch.cuda.is_available() is False); "
                               "use FusedRollout.rollout, or reference_rollout on CPU")
        device = torch.device(device)
        if device.type != "cuda" or fused.device.type != "cuda":
            raise RuntimeError(f"CudaGraphRollout needs CUDA tensors; got device {device} and weights on "
                               f"{fused.device}")
        self.fused, self.batch, self.steps, self.k_cand, self.bound = fused, batch, steps, k_cand, bound
        self.hidden = torch.zeros(batch, steps, fused.H, dtype=hidden_dtype or fused.w2.dtype, device=device)
        self.base_logits = torch.zeros(batch, steps, fused.V, dtype=logits_dtype or fused.w2.dtype, device=device)
        self.anchor = torch.zeros(batch, dtype=torch.int64, device=device)
        self._fallbacks = None
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # compiles the Triton kernels and warms the allocator
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.tokens, self._fallbacks = self._run()

    def _run(self):
        if self.k_cand is None:
            return self.fused.rollout(self.hidden, self.base_logits, self.anchor), None
        return self.fused.topk_rollout(self.hidden, self.base_logits, self.anchor, self.k_cand, self.bound)

    def rollout(self, hidden: Tensor, base_logits: Tensor, anchor: Tensor) -> Tensor:
        self.hidden.copy_(hidden)
        self.base_logits.copy_(base_logits)
        self.anchor.copy_(anchor)
        self.graph.replay()
        return self.tokens.clone()

    @property
    def last_fallbacks(self) -> Tensor | None:
        return None if self._fallbacks is None else self._fallbacks.clone()


# ---- memory traffic model (bytes read per block), used by the benchmark and the docs -------------
@dataclass
class Traffic:
    per_step: dict
    per_block: dict

    @property
    def total(self) -> int:
        return int(sum(self.per_block.values()))


def traffic_per_block(H: int, V: int, E: int, G: int, k: int, P: int = 1, *, mode: str = "fused",
                      weight_bytes: int = 2, table_bytes: int = 2, logit_bytes: int = 2, hidden_bytes: int = 2,
                      k_cand: int = 64, fallback_rate: float = 0.0) -> Traffic:
    """Dominant HBM reads of one block's rollout (weights and inputs; the small per-step state I/O is
    ignored). ``mode``: "reference" (embedding row + W_ih + W_hh per GRU step, W1 + W2 per correction),
    "fused" (gi-table row + [w_s; W_hh] per step, W2 + base row per correction step, w_z once), or
    "topk" (the fused path with only ``k_cand`` rows of W2 plus the top-k over the base logits once;
    ``fallback_rate`` of the rows read the full W2 as well)."""
    n_corr = max(0, k - P)
    if mode == "reference":
        step = {"embed_row": H * table_bytes, "w_ih": 3 * G * H * weight_bytes, "w_hh": 3 * G * G * weight_bytes}
        corr = {"w1": E * (H + G) * weight_bytes, "w2": V * E * weight_bytes, "base_row": V * logit_bytes}
        block = {kk: v * k for kk, v in step.items()}
        block.update({kk: v * n_corr for kk, v in corr.items()})
        block["base_prefix_rows"] = P * V * logit_bytes
        return Traffic({**step, **corr}, block)
    step = {"gi_row": 3 * G * table_bytes, "w_s_hh": (E + 3 * G) * G * weight_bytes}
    if mode == "fused":
        corr = {"w2": V * E * weight_bytes, "base_row": V * logit_bytes}
    elif mode == "topk":
        corr = {"w2_candidate_rows": k_cand * E * weight_bytes, "candidate_base": k_cand * logit_bytes,
                "w2_fallback": fallback_rate * V * E * weight_bytes}
    else:
        raise ValueError(mode)
    block = {kk: v * k for kk, v in step.items()}
    block.update({kk: v * n_corr for kk, v in corr.items()})
    block["w_z"] = E * H * 4
    block["hidden"] = k * H * hidden_bytes
    block["base_prefix_rows"] = P * V * logit_bytes
    if mode == "topk":
        block["topk_over_base"] = n_corr * V * logit_bytes
    return Traffic({**step, **corr}, block)
