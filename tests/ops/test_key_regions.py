"""PGD key predictive regions (kd_det2.ops.key_regions), written from the spec."""

import math

import pytest
import torch
from detectron2.structures import Boxes, Instances

from kd_det2.ops import key_region_weights, key_regions, pad_gt, reference_key_region_weights


def _grid(h, w, stride=8.0):
    """(h*w, 2) centres (x, y) of an h x w grid, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float() * stride + stride / 2


def _random_case(g, n=2, h=8, w=8, num_classes=3, num_gt=3, quantise=False):
    points = _grid(h, w)
    r = points.shape[0]
    size = w * 8.0
    scores = torch.rand(n, r, num_classes, generator=g)
    half = torch.rand(n, r, 2, generator=g) * 20 + 2
    pred = torch.cat([points - half, points + half], dim=-1)
    if quantise:  # many exact ties in the quality
        scores = (scores * 4).round() / 4
        pred = (pred / 8).round() * 8
    xy = torch.rand(n, num_gt, 2, generator=g) * size * 0.7
    wh = torch.rand(n, num_gt, 2, generator=g) * size * 0.5 + 4
    gt = torch.cat([xy, xy + wh], dim=-1)
    classes = torch.randint(0, num_classes, (n, num_gt), generator=g)
    valid = torch.rand(n, num_gt, generator=g) > 0.25
    return scores, pred, points, gt, classes, valid


def _inside(points, gt):
    x, y = points[:, 0], points[:, 1]
    return (
        (x > gt[..., 0, None])
        & (y > gt[..., 1, None])
        & (x < gt[..., 2, None])
        & (y < gt[..., 3, None])
    )


def test_zero_outside_boxes_background_and_range():
    g = torch.Generator().manual_seed(0)
    scores, pred, points, gt, classes, valid = _random_case(g, n=3, num_gt=4)
    w, b = key_region_weights(scores, pred, points, gt, classes, valid, topk=9)
    assert w.shape == (2, 3, 64) and b.shape == (3, 64) and w.dtype == torch.float32
    in_any = (_inside(points, gt) & valid[..., None]).any(dim=1)  # (N, R)
    assert (w[:, ~in_any] == 0).all()
    assert torch.equal(b, (~in_any).float())
    assert (b[(w > 0).any(dim=0)] == 0).all()  # W > 0 => B = 0
    assert ((w >= 0) & (w <= 1)).all()
    assert (w > 0).any()


def _single_gt(points, box, scores_1d, pred=None):
    r = points.shape[0]
    scores = scores_1d.view(1, r, 1)
    if pred is None:
        pred = torch.tensor(box).expand(1, r, 4).clone()
    return scores, pred, points, torch.tensor([[box]]), torch.zeros(1, 1, dtype=torch.long)


def test_at_most_k_and_exactly_k_when_all_inside():
    points = _grid(6, 6)
    scores = torch.linspace(0.1, 0.9, 36)
    valid = torch.ones(1, 1, dtype=torch.bool)
    big = _single_gt(points, [0.0, 0.0, 48.0, 48.0], scores)
    w, _ = key_region_weights(*big, valid, topk=7)
    assert int((w[0] > 0).sum()) == 7 and int((w[1] > 0).sum()) == 7
    small = _single_gt(points, [0.0, 0.0, 20.0, 48.0], scores)  # top scores lie outside it
    w, _ = key_region_weights(*small, valid, topk=7)
    assert int((w[0] > 0).sum()) <= 7 and int((w[1] > 0).sum()) <= 7


def test_topk_one_gives_weight_one_and_topk_above_r_uses_r():
    points = _grid(3, 3)
    scores = torch.linspace(0.1, 0.9, 9)
    case = _single_gt(points, [0.0, 0.0, 24.0, 24.0], scores)
    w, _ = key_region_weights(*case, torch.ones(1, 1, dtype=torch.bool), topk=1)
    assert int((w > 0).sum()) == 2 and w[0, 0, 8] == 1.0 and w[1, 0, 8] == 1.0
    w, _ = key_region_weights(*case, torch.ones(1, 1, dtype=torch.bool), topk=50)
    assert int((w[0] > 0).sum()) == 9


def test_weight_one_at_mean_and_equal_at_equal_radius():
    # 5 x 5 grid (stride 8): candidates = the centre (20, 20) and its 4 neighbours, whose mean is
    # the centre. Sigma = diag(2 * 64 / 5) + 1e-4 I, so each neighbour is at d^2 = 64 / 25.6001.
    points = _grid(5, 5)
    scores = torch.full((25,), 0.1)
    centre, neighbours = 12, [7, 11, 13, 17]
    scores[[centre] + neighbours] = 0.9
    case = _single_gt(points, [0.0, 0.0, 40.0, 40.0], scores)
    w, _ = key_region_weights(*case, torch.ones(1, 1, dtype=torch.bool), alphas=(0.0,), topk=5)
    w = w[0, 0]
    assert w[centre].item() == 1.0
    expected = math.exp(-0.5 * 64 / (2 * 64 / 5 + 1e-4))
    for i in neighbours:
        assert w[i].item() == pytest.approx(expected, rel=1e-6)
    assert int((w > 0).sum()) == 5


def test_xi_one_ranks_by_iou_and_xi_zero_by_score():
    g = torch.Generator().manual_seed(1)
    points = _grid(5, 5)
    box = [0.0, 0.0, 40.0, 40.0]  # every centre inside
    scores = torch.rand(25, generator=g) * 0.9 + 0.05
    shrink = torch.rand(25, generator=g) * 15
    pred = torch.tensor(box) + torch.stack([shrink, shrink, -shrink, -shrink], dim=1)
    iou = ((40 - 2 * shrink) ** 2) / 1600
    case = _single_gt(points, box, scores, pred[None])
    w, _ = key_region_weights(*case, torch.ones(1, 1, dtype=torch.bool), alphas=(1.0, 0.0), topk=6)
    by_iou = set(iou.topk(6).indices.tolist())
    by_score = set(scores.topk(6).indices.tolist())
    assert by_iou != by_score
    assert set(w[0, 0].nonzero()[:, 0].tolist()) == by_iou
    assert set(w[1, 0].nonzero()[:, 0].tolist()) == by_score


def test_ties_go_to_the_lowest_index():
    points = _grid(4, 4)
    case = _single_gt(points, [0.0, 0.0, 32.0, 32.0], torch.full((16,), 0.5))
    w, _ = key_region_weights(*case, torch.ones(1, 1, dtype=torch.bool), topk=5)
    assert w[0, 0].nonzero()[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_independent_of_gt_order_padding_and_other_images():
    g = torch.Generator().manual_seed(2)
    scores, pred, points, gt, classes, valid = _random_case(g, n=2, num_gt=4)
    valid[:] = True
    w, b = key_region_weights(scores, pred, points, gt, classes, valid, topk=9)
    perm = torch.tensor([2, 0, 3, 1])
    w2, b2 = key_region_weights(
        scores, pred, points, gt[:, perm], classes[:, perm], valid[:, perm], topk=9
    )
    assert torch.equal(w, w2) and torch.equal(b, b2)
    # padded GTs (garbage boxes, invalid) change nothing
    pad_box = torch.tensor([[[0.0, 0.0, 64.0, 64.0]]]).expand(2, 2, 4)
    w3, b3 = key_region_weights(
        scores,
        pred,
        points,
        torch.cat([gt, pad_box], dim=1),
        torch.cat([classes, torch.zeros(2, 2, dtype=torch.long)], dim=1),
        torch.cat([valid, torch.zeros(2, 2, dtype=torch.bool)], dim=1),
        topk=9,
    )
    assert torch.equal(w, w3) and torch.equal(b, b3)
    # changing image 1's GTs does not change image 0
    gt4 = gt.clone()
    gt4[1] = gt4[1].flip(0) + 3.0
    w4, b4 = key_region_weights(scores, pred, points, gt4, classes, valid, topk=9)
    assert torch.equal(w4[:, 0], w[:, 0]) and torch.equal(b4[0], b[0])
    assert not torch.equal(w4[:, 1], w[:, 1])


def test_no_gt_gives_zero_weights_and_full_background():
    g = torch.Generator().manual_seed(3)
    scores, pred, points, gt, classes, valid = _random_case(g, n=2)
    valid[1] = False  # image 1 has only padding
    valid[0, 0] = True
    gt[0, 0] = torch.tensor([0.0, 0.0, 40.0, 40.0])
    w, b = key_region_weights(scores, pred, points, gt, classes, valid)
    assert (w[:, 1] == 0).all() and (b[1] == 1).all() and (w[:, 0] > 0).any()
    w, b = key_region_weights(scores, pred, points, gt[:, :0], classes[:, :0], valid[:, :0])
    assert w.shape == (2, 2, 64) and (w == 0).all() and (b == 1).all()


def test_hand_computed_three_candidates():
    # 4 locations; GT (0, 0, 10, 10) of class 0; xi = 0, so q = score and the top-3 are
    # locations 0, 1, 2 at (4, 4), (7, 4), (4, 7); location 3 at (9, 9) is inside but not chosen.
    # mu = (5, 5); offsets (-1, -1), (2, -1), (-1, 2).
    # Sigma = 1/3 [[1+4+1, 1-2-2], [1-2-2, 1+1+4]] = [[2, -1], [-1, 2]]; + 1e-4 I gives
    #   [[2.0001, -1], [-1, 2.0001]], det = 2.0001^2 - 1 = 3.00040001,
    #   adj = [[2.0001, 1], [1, 2.0001]].
    # v^T adj v: (-1, -1): 2.0001 + 2 + 2.0001 = 6.0002; (2, -1): 4*2.0001 - 4 + 2.0001 = 6.0005;
    #            (-1, 2): 2.0001 - 4 + 4*2.0001 = 6.0005.
    # d^2 = v^T adj v / (det + 1e-10): 6.0002 / 3.0004 = 1.99980, 6.0005 / 3.0004 = 1.99990
    # (without the 1e-4 both would be exactly 2: 3 points in 2-D all lie at d^2 = 2).
    # w = exp(-d^2 / 2) = exp(-0.99990) = 0.367916 and exp(-0.99995) = 0.367898.
    points = torch.tensor([[4.0, 4.0], [7.0, 4.0], [4.0, 7.0], [9.0, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1]).view(1, 4, 1)
    pred = torch.zeros(1, 4, 4)  # IoU 0, but IoU^0 = 1
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    args = (scores, pred, points, gt, torch.zeros(1, 1, dtype=torch.long))
    valid = torch.ones(1, 1, dtype=torch.bool)
    w, b = key_region_weights(*args, valid, alphas=(0.0,), topk=3)
    det = 2.0001**2 - 1 + 1e-10
    w0, w12 = math.exp(-0.5 * 6.0002 / det), math.exp(-0.5 * 6.0005 / det)
    assert w[0, 0].tolist() == pytest.approx([w0, w12, w12, 0.0], rel=1e-6)
    assert w0 == pytest.approx(0.367916, abs=1e-6) and w12 == pytest.approx(0.367898, abs=1e-6)
    assert b[0].tolist() == [0.0, 0.0, 0.0, 0.0]
    # the same configuration off the half-pixel grid (float64 moments): the same weights
    shift = 0.1
    w, _ = key_region_weights(scores, pred, points + shift, gt + shift, args[4], valid,
                              alphas=(0.0,), topk=3)  # fmt: skip
    assert w[0, 0].tolist() == pytest.approx([w0, w12, w12, 0.0], rel=1e-6)
    # code order: location 1 (x = 7) falls outside a narrower box after the Gaussian fit
    narrow = torch.tensor([[[0.0, 0.0, 6.0, 10.0]]])
    w, b = key_region_weights(scores, pred, points, narrow, args[4], valid, alphas=(0.0,), topk=3)
    assert w[0, 0].tolist() == pytest.approx([w0, 0.0, w12, 0.0], rel=1e-6)
    assert b[0].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_mask_before_topk_selects_only_inbox_locations():
    points = _grid(6, 6)
    scores = torch.linspace(0.1, 0.9, 36)  # the best locations are at the bottom right
    box = [0.0, 0.0, 24.0, 24.0]  # holds the 3 x 3 top-left centres: indices 0-2, 6-8, 12-14
    case = _single_gt(points, box, scores)
    valid = torch.ones(1, 1, dtype=torch.bool)
    w, _ = key_region_weights(*case, valid, topk=5)
    assert int((w > 0).sum()) == 0  # code order: all 5 candidates outside the box
    w, _ = key_region_weights(*case, valid, topk=5, mask_before_topk=True)
    inbox = {0, 1, 2, 6, 7, 8, 12, 13, 14}
    for m in w:
        chosen = set(m[0].nonzero()[:, 0].tolist())
        assert len(chosen) == 5 and chosen <= inbox
        assert chosen == {8, 12, 13, 14, 7}  # the 5 best in-box scores
    w, _ = key_region_weights(*case, valid, topk=20, mask_before_topk=True)
    assert set(w[0, 0].nonzero()[:, 0].tolist()) == inbox  # fewer in-box than K


@pytest.mark.parametrize("mask_before", [False, True])
def test_matches_reference_loop_on_random_inputs(mask_before):
    g = torch.Generator().manual_seed(4)
    for trial in range(40):
        n = int(torch.randint(1, 4, (1,), generator=g))
        num_gt = int(torch.randint(0, 5, (1,), generator=g))
        h, w_ = (int(x) for x in torch.randint(1, 7, (2,), generator=g))
        num_classes = int(torch.randint(1, 4, (1,), generator=g))
        case = _random_case(g, n, h, w_, num_classes, num_gt, quantise=trial % 2 == 0)
        topk = [1, 3, 9, 50][trial % 4]
        alphas = (0.8, 0.6, 0.5, 0.3, 1.0, 0.0)
        got = key_region_weights(*case, alphas=alphas, topk=topk, mask_before_topk=mask_before)
        ref = reference_key_region_weights(
            *case, alphas=alphas, topk=topk, mask_before_topk=mask_before
        )
        torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
        assert torch.equal(got[1], ref[1])


def test_chunking_over_images_gives_the_same_result(monkeypatch):
    g = torch.Generator().manual_seed(6)
    case = _random_case(g, n=5, num_gt=3)
    full = key_region_weights(*case, topk=9)
    monkeypatch.setattr(key_regions, "MAX_PAIRS", 2 * 3 * 64)  # two images per chunk
    chunked = key_region_weights(*case, topk=9)
    assert torch.equal(full[0], chunked[0]) and torch.equal(full[1], chunked[1])


def test_half_precision_inputs_give_float32():
    g = torch.Generator().manual_seed(5)
    scores, pred, points, gt, classes, valid = _random_case(g)
    w, b = key_region_weights(scores.half(), pred.half(), points, gt, classes, valid, topk=9)
    assert w.dtype == torch.float32 and torch.isfinite(w).all()
    with pytest.raises(ValueError, match="backend"):
        key_region_weights(scores, pred, points, gt, classes, valid, backend="cuda")


def test_pad_gt():
    a = Instances(
        (10, 10), gt_boxes=Boxes(torch.tensor([[1.0, 2, 3, 4]])), gt_classes=torch.tensor([2])
    )
    b = Instances((10, 10), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0).long())
    boxes, classes, valid = pad_gt([b, a])
    assert boxes.shape == (2, 1, 4) and classes.tolist() == [[0], [2]]
    assert valid.tolist() == [[False], [True]] and boxes[1, 0].tolist() == [1, 2, 3, 4]


def _float_weights(centres, valid):
    """The Gaussian weights from float64 sums (key_regions' fallback off the grid)."""
    sxx, syy, sxy, dx, dy = key_regions._float_moments(centres.double(), valid)
    maha = (syy * dx * dx - 2.0 * sxy * dx * dy + sxx * dy * dy) / (sxx * syy - sxy * sxy + 1e-10)
    return torch.exp(-0.5 * maha) * valid


def test_gaussian_moments_are_exact_in_any_order():
    """On the half-pixel grid the moments are integer sums: permuting the candidates permutes
    the float64 weights bit for bit (float64 sums differ in their last bits, see below)."""
    g = torch.Generator().manual_seed(7)
    cells = torch.randint(-20, 150, (60, 30, 2), generator=g)
    for centres in ((cells + 0.5) * 8.0, cells * 4.0):  # (i + 0.5) * stride, stride / 2 multiples
        valid = torch.rand(60, 30, generator=g) > 0.2
        perm = torch.randperm(30, generator=g)
        w = key_regions._gaussian_weights(centres, valid)
        assert torch.equal(
            w[:, perm], key_regions._gaussian_weights(centres[:, perm], valid[:, perm])
        )
        torch.testing.assert_close(w, _float_weights(centres, valid), rtol=1e-12, atol=1e-12)
        f = _float_weights(centres, valid)
        assert not torch.equal(f[:, perm], _float_weights(centres[:, perm], valid[:, perm]))
        assert w[valid].min() > 0 and (w[~valid] == 0).all()


def test_off_grid_centres_use_float64_moments():
    g = torch.Generator().manual_seed(8)
    centres = (torch.randint(0, 50, (20, 12, 2), generator=g) + 0.5) * 8.0
    valid = torch.ones(20, 12, dtype=torch.bool)
    valid[:, -1] = False
    off = centres.clone()
    off[:, 0, 0] += 1e-3  # one fitted centre off the grid: the whole fit uses float64 sums
    assert torch.equal(key_regions._gaussian_weights(off, valid), _float_weights(off, valid))
    off = centres.clone()
    off[:, -1] += 0.25  # off the grid but not fitted: the exact moments stay
    w = key_regions._gaussian_weights(off, valid)
    assert torch.equal(w, key_regions._gaussian_weights(centres, valid))
    huge = centres.clone()
    huge[:, 0, 1] = 2.0**22  # beyond GRID_MAX in half-pixels: float64 sums
    assert torch.equal(key_regions._gaussian_weights(huge, valid), _float_weights(huge, valid))
    many = (torch.randint(0, 50, (2, key_regions.EXACT_MAX_K + 1, 2), generator=g) + 0.5) * 8.0
    ones = torch.ones(many.shape[:2], dtype=torch.bool)
    assert torch.equal(key_regions._gaussian_weights(many, ones), _float_weights(many, ones))
