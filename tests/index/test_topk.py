"""block_topk returns exactly torch.topk's values, with ids that hold those values, on hard inputs."""

import pytest
import torch

from vecrag.index.topk import block_topk, fast_topk


def assert_exact(s: torch.Tensor, k: int, vals: torch.Tensor, ids: torch.Tensor) -> None:
    assert torch.equal(vals, torch.topk(s, k, dim=1).values)
    assert torch.equal(torch.gather(s, 1, ids), vals)  # the ids point at those values
    assert all(len(set(r.tolist())) == k for r in ids)  # no column twice in a row


def check(s: torch.Tensor, k: int, width: int = 64) -> None:
    for strided in (False, True):
        assert_exact(s, k, *block_topk(s, k, width, strided))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_random_scores_match_torch_topk(dtype):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(16, 50_003, generator=g).to(dtype)  # 50,003 = 781 blocks of 64 + a tail of 19
    for k in (1, 10, 138):
        check(s, k)


def test_all_winners_in_one_block_and_in_the_tail():
    s = torch.zeros(3, 10_000)
    s[0, 640:704] = torch.linspace(1, 2, 64)     # one block holds the top 64
    s[1, -16:] = 5.0                             # the tail (10,000 = 156 x 64 + 16) holds the top 16
    s[2] = torch.arange(10_000, dtype=torch.float32)  # sorted: the last columns win
    s[0, 5:10_000 - 16:156] = 3.0                # one strided group (every 156th column) holds the top 64
    check(s, 64)
    check(s, 100)


def test_heavy_ties():
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 5, (8, 20_000), generator=g).float()  # thousands of columns tie at the top value
    check(s, 50)


def test_small_rows_fall_back_and_bad_args_are_refused():
    s = torch.randn(4, 100)
    check(s, 30)  # 1 block of 64 < 4 k: plain torch.topk
    with pytest.raises(ValueError, match="between 0"):
        block_topk(s, 101)
    with pytest.raises(ValueError, match="2-D"):
        block_topk(s[0], 3)


def test_fast_topk_is_torch_topk_off_cuda():
    s = torch.randn(4, 5_000)
    assert all(torch.equal(a, b) for a, b in zip(fast_topk(s, 7), torch.topk(s, 7, dim=1), strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
def test_fast_topk_on_cuda_matches_torch_topk():
    g = torch.Generator(device="cuda").manual_seed(0)
    s = torch.randn(64, 300_007, device="cuda", generator=g).half()
    for k in (1, 10, 138, 1000):
        assert_exact(s, k, *fast_topk(s, k))
