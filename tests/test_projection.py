"""project_rows: the drafter's vocabulary projection picks the faster layout on a CPU but
computes the same logits as the lm_head itself."""

import torch
from torch import nn

from specforge_core import projection
from specforge_core.projection import _project, project_rows


def test_both_layouts_and_the_chosen_one_equal_the_linear_layer():
    torch.manual_seed(0)
    head = nn.Linear(48, 1000, bias=False)
    hidden = torch.randn(1, 7, 48)
    expected = head(hidden)  # [1, 7, 1000]
    rows = hidden.reshape(-1, 48)
    for transposed in (False, True):
        torch.testing.assert_close(_project(rows, head.weight, transposed).reshape(1, 7, 1000), expected)
    out = project_rows(hidden, head)
    assert out.shape == (1, 7, 1000)
    torch.testing.assert_close(out, expected)
    assert (7, 1000, 48, torch.float32) in projection._transposed_is_faster  # decided once, remembered
    torch.testing.assert_close(project_rows(hidden, head.weight), expected)  # a bare weight works too


def test_a_head_with_bias_goes_through_the_module():
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=True)
    hidden = torch.randn(2, 3, 16)
    torch.testing.assert_close(project_rows(hidden, head), head(hidden))
