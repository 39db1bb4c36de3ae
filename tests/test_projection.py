"""project_rows: the drafter's vocabulary projection picks the faster layout on a CPU but
computes the same logits as the lm_head itself."""

import torch
from torch import nn

from specforge_core import projection
from specforge_core.projection import _product, few_row_linears, project_rows


def test_both_layouts_and_the_chosen_one_equal_the_linear_layer():
    torch.manual_seed(0)
    head = nn.Linear(48, 1000, bias=False)
    hidden = torch.randn(1, 7, 48)
    expected = head(hidden)  # [1, 7, 1000]
    rows = hidden.reshape(-1, 48)
    for transposed in (False, True):
        torch.testing.assert_close(_product(rows, head.weight, transposed).reshape(1, 7, 1000), expected)
    out = project_rows(hidden, head)
    assert out.shape == (1, 7, 1000)
    torch.testing.assert_close(out, expected)
    # decided once, remembered under everything that changes the answer (shape, dtype, threads)
    assert (7, 1000, 48, torch.float32, torch.get_num_threads()) in projection._transposed_is_faster
    torch.testing.assert_close(project_rows(hidden, head.weight), expected)  # a bare weight works too


def test_a_head_with_bias_goes_through_the_module():
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=True)
    hidden = torch.randn(2, 3, 16)
    torch.testing.assert_close(project_rows(hidden, head), head(hidden))


def test_few_row_linears_patches_inside_the_block_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 300, bias=False))
    x = torch.randn(1, 9, 32)
    expected = model(x)
    with few_row_linears(model):
        assert all("forward" in m.__dict__ for m in model if isinstance(m, nn.Linear))
        torch.testing.assert_close(model(x), expected)
        assert model(torch.randn(1, 40, 32)).shape == (1, 40, 300)  # many rows: plain F.linear
    assert not any("forward" in m.__dict__ for m in model)


def test_verify_logits_match_with_and_without_the_few_row_layout():
    from specforge_core.interfaces import Candidates
    from tiny import tiny_target

    target = tiny_target()
    prompt = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(1))
    cands = Candidates(tokens=torch.tensor([[3, 7, 9, 11, 2]]), probs=None, parents=torch.arange(5) - 1,
                       depths=torch.arange(5) + 1)
    out = {}
    for fast in (False, True):
        target.fast_few_rows = fast
        target.prefill(prompt)
        out[fast] = target.verify(torch.tensor([5]), cands)  # (logits [1, 6, V], features)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-5)
