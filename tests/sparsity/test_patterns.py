import pytest
import torch

from mope_deploy.sparsity import Pattern, SparsityError, detect_pattern, is_nm, layer_mask, nm_mask, parse_pattern, row_mask


def test_parse_pattern():
    assert parse_pattern("unstructured") == Pattern()
    assert parse_pattern("2:4") == Pattern(2, 4) and parse_pattern("4:8").sparsity == 0.5
    for bad in ("3:2", "0:4", "2-4", "half"):
        with pytest.raises(SparsityError):
            parse_pattern(bad)


def test_row_mask_matches_naive_per_row_sort():
    torch.manual_seed(0)
    s = torch.rand(7, 20)
    m = row_mask(s, 0.35)
    k = round(0.35 * 20)
    for r in range(7):
        pruned = set(torch.argsort(s[r])[:k].tolist())
        assert {j for j in range(20) if not m[r, j]} == pruned


def test_layer_mask_is_one_threshold():
    torch.manual_seed(0)
    s = torch.rand(9, 13)
    m = layer_mask(s, 0.4)
    k = round(0.4 * s.numel())
    assert int((~m).sum()) == k
    assert s[~m].max() < s[m].min()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_keeps_top_n_of_each_group(n, m):
    torch.manual_seed(0)
    s = torch.rand(5, 4 * m)
    mask = nm_mask(s, n, m)
    g = mask.view(5, 4, m)
    assert (g.sum(-1) == n).all()
    sg = s.view(5, 4, m)
    for r in range(5):
        for b in range(4):
            top = set(torch.topk(sg[r, b], n).indices.tolist())
            assert top == set(torch.nonzero(g[r, b]).flatten().tolist())
    assert is_nm(s * mask, n, m)
    assert not is_nm(s, n, m)


def test_nm_mask_rejects_width_not_multiple():
    with pytest.raises(SparsityError, match="multiple of 4"):
        nm_mask(torch.rand(3, 10), 2, 4)


def test_detect_pattern():
    w = torch.randn(4, 16)
    assert detect_pattern([w]) == "dense"
    w24 = w * nm_mask(w.abs(), 2, 4)
    assert detect_pattern([w24, w]) == "2:4"  # dense layers do not break a mixed 2:4 model
    w48 = w * nm_mask(w.abs(), 4, 8)
    assert detect_pattern([w48]) in ("4:8", "2:4") and is_nm(w48, 4, 8)
    wu = w.clone()
    wu[0, :3] = 0
    assert detect_pattern([wu]) == "unstructured"
