"""The Domino base-anchored curriculum (paper section 4.2) changes what a head learns on a
frozen drafter (training.component=corrector): there the paper's L_base has no gradient, so
the anchor is KL(p_base || p_final) on the corrector's output (training/losses.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specforge_core.build import load_target
from specforge_core.recipe import load_recipe
from specforge_core.training.losses import corrector_loss
from specforge_core.training.run import build_for_training, train

ROOT = Path(__file__).resolve().parents[1]
DOMINO = str(ROOT / "recipes" / "train_domino_tiny.yaml")
# a fresh (seeded) 1-layer DFlash backbone instead of a trained checkpoint: it is frozen either way
FRESH_BACKBONE = ["drafter.checkpoint=null", "drafter.options.config={num_hidden_layers: 1, target_layer_ids: [0, 1]}"]
SHORT = ["training.max_steps=2", "training.data.limit=2", "training.data.regen_max_new_tokens=16",
         "training.batch_size=2", "training.num_anchors=8", "training.save_every=0", "training.eval_limit=1",
         "training.eval_max_new_tokens=4", "training.warmup_ratio=0"]
HEAD_KEYS = ("prefix_gru.", "embed_proj.")


def _head_after_training(out: Path, data: Path, *schedule: str) -> dict:
    r = load_recipe(DOMINO, [*FRESH_BACKBONE, *SHORT, f"training.output_dir={out}",
                             f"training.data.cache_dir={data}", *schedule])
    train(r, progress=False)
    weights = load_file(str(out / "final" / "model.safetensors"))
    return {k: v for k, v in weights.items() if k.startswith(HEAD_KEYS)}


def test_lambda_schedule_changes_the_trained_head(tmp_path):
    data = tmp_path / "data"  # regenerated once, shared by every run
    paper = ["training.lambda_base_start=1.0", "training.lambda_base_decay_ratio=1.0"]
    a = _head_after_training(tmp_path / "a", data, *paper)
    again = _head_after_training(tmp_path / "again", data, *paper)
    none = _head_after_training(tmp_path / "none", data, "training.lambda_base_start=0.0")
    assert a.keys() == again.keys() == none.keys() and len(a) == 4
    assert all(torch.equal(a[k], again[k]) for k in a)  # the same schedule: bit-identical heads
    assert max((a[k] - none[k]).abs().max().item() for k in a) > 1e-4  # another schedule: another head


@pytest.fixture(scope="module")
def frozen_setup():
    r = load_recipe(DOMINO, [*FRESH_BACKBONE, "training.component=corrector"])
    target = load_target(r.cfg.target)
    drafter, corrector, module = build_for_training(r, target)
    target.capture(drafter.context_layers)
    with torch.no_grad():  # a head that already corrects (a fresh one starts with W2 = 0)
        w2 = corrector.head.embed_proj[2].weight
        w2.copy_(torch.randn(w2.shape, generator=torch.Generator().manual_seed(0)) * 2.0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (2, 40), generator=g)
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, 10:] = 1
    batch = {"input_ids": ids, "loss_mask": loss_mask, "attention_mask": torch.ones_like(ids),
             "target_hidden": target.hidden_features(ids), "num_anchors": 8, "gamma": 7.0}
    return drafter, corrector, batch


def _head_grad(drafter, corrector, batch, lam: float, frozen: bool) -> torch.Tensor:
    params = [p for p in corrector.head.parameters()]
    out = corrector_loss(drafter, corrector, {**batch, "generator": torch.Generator().manual_seed(2)}, lam,
                         frozen_drafter=frozen)
    grads = torch.autograd.grad(out["loss"], params)
    return torch.cat([g.flatten() for g in grads])


def test_frozen_drafter_anchor_is_not_a_gradient_rescale(frozen_setup):
    """The paper's L_base alone, on a frozen backbone, would only scale the head's gradient by
    (1 - lambda) - which AdamW normalises away. The KL anchor changes its direction."""
    drafter, corrector, batch = frozen_setup
    assert not any(p.requires_grad for p in drafter.training_module().parameters())
    g0 = _head_grad(drafter, corrector, batch, 0.0, frozen=True)
    paper = _head_grad(drafter, corrector, batch, 0.5, frozen=False)
    torch.testing.assert_close(paper, 0.5 * g0)  # the claim: without the anchor, lambda only rescales
    anchored = _head_grad(drafter, corrector, batch, 0.5, frozen=True)
    cos = torch.nn.functional.cosine_similarity(anchored, g0, dim=0).item()
    assert cos < 0.99, cos
    # lambda = 1: the head is pulled back to the backbone's own distribution (KL), not to the labels
    g1 = _head_grad(drafter, corrector, batch, 1.0, frozen=True)
    assert g1.abs().max() > 0 and torch.nn.functional.cosine_similarity(g1, g0, dim=0).item() < 0.9
