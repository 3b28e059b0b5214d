"""The budget planner's rule on constructed inputs: budget and throughput in, plan out."""

import pytest

from docsort.train.plan import Rules, Throughput, member_seconds, plan, progressive_cost

# 40 img/s training and 20 img/s TTA-8 at 160 px: the order of a 2-core CPU with resnet18
CPU = Throughput(train_images_per_s=40.0, tta_images_per_s=20.0, image_size=160)


def test_throughput_scales_with_pixels():
    s = CPU.at(320)
    assert s.train_images_per_s == pytest.approx(10.0) and s.tta_images_per_s == pytest.approx(5.0)


def test_a_short_budget_trains_one_member_on_all_pages_at_a_size_that_gets_min_epochs():
    rules = Rules(oof_share=0.0, fit_efficiency=1.0)  # no proxy: the whole budget is the member's
    p = plan(600, n_train=680, n_test=170, speed=CPU, rules=rules)
    assert (p.fold, p.members, p.image_size) == ("none", 1, 224)
    assert p.epochs >= rules.min_epochs and p.estimated_s <= 600
    # 20 % less time: 224 px would give fewer than min_epochs, so the next size down
    s = CPU.at(224)
    assert (480 - 170 / s.tta_images_per_s - rules.overhead_s) / (680 / s.train_images_per_s) < 16
    assert plan(480, 680, 170, CPU, rules).image_size == 192


def test_more_budget_buys_image_size_before_members():
    sizes = [plan(b, 680, 170, CPU).image_size for b in (300, 600, 1200, 2400)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]


def test_folds_only_when_every_fold_member_gets_enough_epochs():
    rules = Rules()
    long = plan(6 * 3600, 680, 170, CPU)
    assert (long.fold, long.members, long.oof) == ("all", rules.folds, "folds")
    assert long.epochs == rules.enough_epochs and long.image_size == max(rules.sizes)
    assert long.estimated_s <= 6 * 3600
    # an hour: one member would pass enough_epochs, 5 folds would not fit: seeds on all pages
    hour = plan(3600, 680, 170, CPU)
    assert (hour.fold, hour.members, hour.epochs) == ("none", 2, rules.enough_epochs)
    assert hour.estimated_s <= 3600
    assert "2 members (one seed each) on all pages" in hour.describe()


def test_oof_comes_from_a_proxy_when_it_is_cheap_and_from_nothing_when_it_is_not():
    p = plan(600, 680, 170, CPU)
    assert p.oof == "proxy" and p.proxy == {"image_size": 96, "epochs": 6, "folds": 2}
    # the proxy's time is taken from the main member: without it, more epochs
    no_proxy = plan(600, 680, 170, CPU, Rules(oof_share=0.0, sizes=(p.image_size,)))
    assert no_proxy.oof == "none" and no_proxy.epochs > p.epochs
    assert "proxy for OOF would take" in no_proxy.notes[0]
    assert "OOF from a proxy" in p.describe() and "no OOF" in no_proxy.describe()


def test_a_budget_too_small_for_min_epochs_says_so_at_the_smallest_size():
    p = plan(60, 3013, 1006, CPU)
    assert p.image_size == min(Rules().sizes) and p.epochs >= 1
    assert any("fewer than 16 epochs" in n for n in p.notes)


def test_progressive_resizing_makes_epochs_cheaper_so_more_fit():
    cost = progressive_cost(0.5, 0.5)
    assert 0.5 < cost < 1.0 and progressive_cost(1.0, 0.5) == 1.0
    assert progressive_cost(0.5, 1.0) == pytest.approx((0.25 + 0.5 + 1) / 3)
    plain = plan(600, 680, 170, CPU, Rules(oof_share=0.0))
    prog = plan(
        600, 680, 170, CPU, Rules(oof_share=0.0, sizes=(plain.image_size,)), cost_factor=cost
    )
    assert prog.epochs > plain.epochs


def test_member_seconds_adds_training_prediction_and_overhead():
    assert member_seconds(400, 100, 10, CPU, 5.0) == pytest.approx(10 * 400 / 40 + 100 / 20 + 5)


@pytest.mark.parametrize("budget,n", [(0, 10), (10, 0), (-1, 10)])
def test_nonsense_inputs_are_refused(budget, n):
    with pytest.raises(ValueError, match="must be positive"):
        plan(budget, n, 10, CPU)


def test_progressive_resizing_grows_the_batches_to_full_size():
    from docsort.train.train import progressive_size

    sides = [progressive_size(160, e, 10, 0.5, 0.5) for e in range(10)]
    assert sides[0] == 80 and sides[-1] == 160 and sides == sorted(sides)
    assert all(s % 16 == 0 for s in sides) and sides.index(160) == 4  # full size at half the epochs
    assert {progressive_size(160, e, 10, 1.0, 0.5) for e in range(10)} == {160}  # start=1: off
    assert progressive_size(160, 0, 1, 0.5, 0.5) == 160  # a single epoch trains at full size


def test_the_probe_is_discounted_by_the_measured_fit_efficiency():
    one = plan(600, 680, 170, CPU, Rules(oof_share=0.0, sizes=(160,), fit_efficiency=1.0))
    half = plan(600, 680, 170, CPU, Rules(oof_share=0.0, sizes=(160,), fit_efficiency=0.5))
    # 680 pages at 40 img/s: 17 s an epoch, 34 s at half the rate; 8.5 s TTA + 10 s overhead fixed
    assert (one.epochs, half.epochs) == (34, 17)
