"""Parity of SpecForge's ``dflash2`` drafter with z-lab's reference (PyPI ``dflash`` 0.1.0, ``dflash/model.py``).

Builds a small random DFlash2 drafter (sliding + full layers, convs, selector, output multiplier,
logit softcapping, input embedding scale) for a tiny random Qwen3 target, saves it in z-lab's
layout (config.json with ``dflash_config``, model.safetensors with bare
``candidate_selector.{predecessor,successor}_codebook`` tensors), loads it with BOTH the reference
(``DFlash2DraftModel.from_pretrained``) and SpecForge (``drafter.checkpoint``), and compares:

1. one block from the same target features: max |logit difference| and the argmax drafts;
2. the CandidateSelector at T = 0 on that block: the selected tokens;
3. whole generations at T = 0: reference ``dflash_generate`` (its base-logit path: ``propose``
   replaced by the argmax of ``compute_logits``, as SpecForge drafts without a selector
   corrector) vs SpecForge's chain verifier - output tokens and accepted lengths per cycle;
   and with the selector (reference ``dflash_generate`` as shipped) vs SpecForge's ``dflash2``
   drafter + ``selector`` corrector, both read from the same directory (each claims its keys);
4. the sparse q at T > 0: the reference's ``CandidateSelector.select`` samples a path and returns
   q over its top-K per position; the selector corrector, stepped along the same path, must give
   the same candidates and the same q (max |difference|).

    python scripts/dflash2_parity.py                     # reference: an installed `dflash`, else /tmp/dflash_pkg/x
    python scripts/dflash2_parity.py --dtype bfloat16    # the same in bf16

Exit status 0 when everything matches. The shims the reference needs live here, not in the plugin.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

VOCAB, HIDDEN, TARGET_LAYERS, BLOCK = int(os.environ.get("PARITY_VOCAB", 12)), 64, 4, 5
DFLASH_CONFIG = {
    "mask_token_id": VOCAB - 1, "target_layer_ids": [0, 2], "block_size": BLOCK, "conv_kernel_size": 2,
    "conv_group_size": 16, "selector_rank": 8, "selector_top_k": 6, "output_multiplier": 0.8,
    "final_logit_softcapping": 4.0, "input_embedding_scale": 1.5,
}


def import_reference():
    """z-lab's ``dflash.model`` (an installed ``dflash``, else the unpacked wheel), or None."""
    ref = None
    try:
        import dflash.model as ref  # noqa: F811
    except ImportError:
        local = os.environ.get("DFLASH_REFERENCE", "/tmp/dflash_pkg/x")
        if Path(local, "dflash", "model.py").is_file():
            sys.path.insert(0, local)
            try:
                import dflash.model as ref  # noqa: F811
            except ImportError:
                return None
    if ref is not None and not torch.cuda.is_available():
        # shim: the reference's stats timer calls torch.cuda.synchronize() unconditionally
        import time

        ref._cuda_time = time.perf_counter
    return ref


def tiny_target(seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                      num_hidden_layers=TARGET_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, max_position_embeddings=512, initializer_range=0.2, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen3ForCausalLM(cfg).eval()


def draft_config(window: int = 6) -> dict:
    """config.json of the drafter, as z-lab writes it: Qwen3 fields + dflash_config."""
    return {
        "architectures": ["DFlash2DraftModel"], "model_type": "qwen3", "hidden_size": HIDDEN,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "intermediate_size": 96, "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 512, "num_target_layers": TARGET_LAYERS, "tie_word_embeddings": False,
        "layer_types": ["sliding_attention", "full_attention"], "use_sliding_window": True,
        "sliding_window": window, "hidden_act": "silu", "attention_bias": False,
        "dflash_config": dict(DFLASH_CONFIG),
    }


def random_tensors(ref_model, seed: int = 0, std: float = 0.3) -> dict:
    """Random weights for every reference parameter, under z-lab's stored key names."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in ref_model.state_dict().items():
        if name.endswith("inv_freq"):
            continue
        t = std * torch.randn(p.shape, generator=g)
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * t
        for book in ("predecessor_codebook", "successor_codebook"):  # stored bare in z-lab's layout
            if name == f"candidate_selector.{book}.weight":
                name = f"candidate_selector.{book}"
        out[name] = t.contiguous()
    return out


def write_checkpoint(ref, directory: Path, seed: int = 0) -> dict:
    """Write a random DFlash2 checkpoint in z-lab's layout; returns its tensors."""
    from safetensors.torch import save_file
    from transformers import Qwen3Config

    cfg = draft_config()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    with torch.device("meta"):
        shapes_model = ref.DFlash2DraftModel(Qwen3Config(**cfg))
    tensors = random_tensors(shapes_model, seed)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return tensors


def load_reference(ref, directory: Path, tensors: dict, dtype=torch.float32):
    model = ref.DFlash2DraftModel.from_pretrained(str(directory), dtype=dtype).eval()
    sd = model.state_dict()
    for k, v in tensors.items():  # the key mapping really loaded the bare codebooks
        key = k + ".weight" if k.endswith("_codebook") else k
        assert torch.equal(sd[key], v.to(dtype)), f"reference did not load {k}"
    return model


def load_ours(directory: Path, target_model):
    from specforge_core.target import TargetModel
    from specforge_dflash2.drafter import DFlash2Drafter, DFlash2Options

    from specforge_selector.corrector import SelectorCorrector, SelectorOptions

    target = TargetModel(target_model)
    drafter = DFlash2Drafter(DFlash2Options(), BLOCK, checkpoint=str(directory))
    drafter.bind(target)
    selector = SelectorCorrector(SelectorOptions())  # reads drafter.checkpoint's candidate_selector.*
    selector.compatible_with(drafter)
    selector.bind(target)
    return target, drafter, selector


def compare_block(ref, ref_model, target_model, drafter, selector, prompt: torch.Tensor, temperature: float = 0.8) -> dict:
    """One block from the prompt's target features, both implementations."""
    from specforge_core.interfaces import DraftContext
    from specforge_core.sampling import Sampler, SamplingParams

    with torch.inference_mode():
        out = target_model(prompt, output_hidden_states=True)
        feats = ref.extract_context_feature(out.hidden_states, ref_model.target_layer_ids)  # [1, t, 2H]
        anchor = out.logits[:, -1].argmax(-1)  # [1]
        t = prompt.shape[1]
        block_ids = torch.full((1, BLOCK), ref_model.mask_token_id, dtype=torch.long)
        block_ids[:, 0] = anchor
        noise = ref._raw_input_embeddings(target_model, block_ids, float(ref._draft_value(ref_model.config, "input_embedding_scale", 1.0)))
        hidden_ref = ref_model(target_hidden=feats, noise_embedding=noise, position_ids=torch.arange(t + BLOCK)[None],
                               past_key_values=ref._make_cache(ref_model.config), use_cache=True)[:, 1 - BLOCK:]
        logits_ref = ref_model.compute_logits(hidden_ref, ref._output_head(target_model)).float()
        sel_ref = ref_model.candidate_selector.select(hidden_ref, ref_model.compute_logits(hidden_ref, target_model.lm_head), anchor, 0.0)[0]

        drafter.reset()
        drafter.commit(t, feats)
        tokens = torch.cat([prompt, anchor[:, None]], 1)
        block = drafter.draft(DraftContext(tokens=tokens, max_draft=BLOCK - 1, sampler=Sampler(SamplingParams())))
        logits = block.logits()
        sel = selector.head.select(block.hidden, logits, anchor, 0.0)[0]
        # T > 0: the reference samples a path and reports q [1, k, K]; step our corrector along that path
        torch.manual_seed(int(prompt.sum()))  # the reference samples with the global generator
        path, ids_ref, q_ref = ref_model.candidate_selector.select(
            hidden_ref, ref_model.compute_logits(hidden_ref, target_model.lm_head), anchor, temperature)
        block.context = DraftContext(tokens=tokens, max_draft=BLOCK - 1,
                                     sampler=Sampler(SamplingParams(temperature=temperature)))
        state, prev, q_diff, same_ids = selector.init_state(block), anchor, 0.0, True
        for i in range(path.shape[1]):
            q, state = selector.step(state, i, prev)
            order_ours, order_ref = q.ids[0].argsort(), ids_ref[0, i].argsort()  # compare as sets
            same_ids &= torch.equal(q.ids[0][order_ours], ids_ref[0, i][order_ref])
            q_diff = max(q_diff, float((q.probs[0][order_ours] - q_ref[0, i][order_ref].float()).abs().max()))
            prev = path[:, i]
    return {"sparse_q_max_abs_diff": q_diff, "sparse_q_same_candidates": bool(same_ids),"max_abs_logit_diff": float((logits - logits_ref).abs().max()),
            "max_abs_hidden_diff": float((block.hidden - hidden_ref).abs().max()),
            "drafts_identical": bool(torch.equal(logits.argmax(-1), logits_ref.argmax(-1))),
            "selector_identical": bool(torch.equal(sel, sel_ref)),
            "drafts": logits.argmax(-1)[0].tolist(), "drafts_ref": logits_ref.argmax(-1)[0].tolist()}


def compare_generation(ref, ref_model, target_model, target, drafter, prompt, max_new: int, selector) -> dict:
    """``selector``: the selector corrector (the reference's drafting as shipped) or None (its base path)."""

    from specforge_core.sampling import SamplingParams
    from specforge_core.scheduler import SpeculativeGenerator
    from specforge_verify.chain import ChainVerifier

    if not selector:  # the reference's base-logit path, as SpecForge drafts without a selector corrector
        def propose(hidden, anchor_ids, output_head, temperature):
            return ref_model.compute_logits(hidden, output_head).argmax(-1), None, None

        ref_model.propose = propose
    try:
        r = ref.dflash_generate(ref_model, target_model, prompt, max_new, None, temperature=0.0, return_stats=True)
    finally:
        ref_model.__dict__.pop("propose", None)
    ref_tokens = r.output_ids[0, prompt.shape[1]:].tolist()
    gen = SpeculativeGenerator(target, drafter, ChainVerifier(ChainVerifier.Options()), corrector=selector)
    out = gen.generate(prompt, max_new, SamplingParams(temperature=0.0))
    ours = [c.num_accepted + 1 for c in out.cycles]
    refs = list(r.acceptance_lengths)
    # the last cycle may differ in width: the reference drafts up to the end of max_length, SpecForge
    # to the budget minus the bonus token; every earlier cycle drafts a full block in both
    return {"tokens_identical": out.tokens == ref_tokens, "accepted_ours": ours, "accepted_ref": refs,
            "accepted_identical": ours[:-1] == refs[: len(ours) - 1] and len(ours) == len(refs),
            "greedy_identical": out.tokens == target.greedy_reference(prompt, max_new)[0].tolist()}


def run(directory: Path, seeds=(0, 1), max_new: int = 40, verbose: bool = True, dtype=torch.float32) -> dict:
    """``dtype``: of the target and both drafters (float32 or bfloat16; both give identical logits)."""
    ref = import_reference()
    if ref is None:
        raise ImportError("the reference `dflash` package is not importable")
    with torch.no_grad():  # not torch.set_grad_enabled(False): the test suite imports and calls this
        return _run(ref, directory, seeds, max_new, verbose, dtype)


def _run(ref, directory: Path, seeds, max_new: int, verbose: bool, dtype) -> dict:
    target_model = tiny_target(0).to(dtype)
    results = {"block": [], "generate_base": [], "generate_selector": []}
    for seed in seeds:
        d = Path(directory) / f"seed{seed}"
        tensors = write_checkpoint(ref, d, seed)
        ref_model = load_reference(ref, d, tensors, dtype)
        target, drafter, selector = load_ours(d, target_model)
        g = torch.Generator().manual_seed(100 + seed)
        for length in (3, 9, 17):  # shorter / longer than the sliding window (6)
            prompt = torch.randint(0, VOCAB - 1, (1, length), generator=g)
            results["block"].append(compare_block(ref, ref_model, target_model, drafter, selector, prompt))
        prompt = torch.randint(0, VOCAB - 1, (1, 8), generator=g)
        results["generate_base"].append(compare_generation(ref, ref_model, target_model, target, drafter, prompt, max_new, None))
        results["generate_selector"].append(compare_generation(ref, ref_model, target_model, target, drafter, prompt, max_new, selector))
    results["max_abs_logit_diff"] = max(b["max_abs_logit_diff"] for b in results["block"])
    results["max_sparse_q_diff"] = max(b["sparse_q_max_abs_diff"] for b in results["block"])
    results["ok"] = (all(b["drafts_identical"] and b["selector_identical"] and b["sparse_q_same_candidates"]
                         for b in results["block"]) and results["max_sparse_q_diff"] < 1e-4
                     and all(x["tokens_identical"] and x["accepted_identical"] and x["greedy_identical"]
                             for k in ("generate_base", "generate_selector") for x in results[k])
                     and results["max_abs_logit_diff"] < 1e-4)
    if verbose:
        for b in results["block"]:
            print(f"block: max|dlogit| {b['max_abs_logit_diff']:.2e}  max|dhidden| {b['max_abs_hidden_diff']:.2e}  "
                  f"drafts identical {b['drafts_identical']} {b['drafts']}  selector identical {b['selector_identical']}  "
                  f"T>0 sparse q: same candidates {b['sparse_q_same_candidates']}, max|dq| {b['sparse_q_max_abs_diff']:.2e}")
        for k in ("generate_base", "generate_selector"):
            for x in results[k]:
                print(f"{k}: tokens identical {x['tokens_identical']} (= greedy {x['greedy_identical']}), "
                      f"accepted lengths identical {x['accepted_identical']}: ours {x['accepted_ours']} ref {x['accepted_ref']}")
        print(f"max abs logit difference {results['max_abs_logit_diff']:.2e}; parity {'OK' if results['ok'] else 'FAILED'}")
    return results


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--seeds", type=int, default=2, help="random drafters to compare")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(0 if run(Path(tmp), seeds=tuple(range(args.seeds)), dtype=getattr(torch, args.dtype))["ok"] else 1)
