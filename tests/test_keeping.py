"""The neighbourhood-keeping encoder: its loss on cases worked out by hand, what training does to
hand-made clusters and to real MNIST neighbourhoods, determinism and resume."""

import contextlib
import dataclasses
import math

import numpy as np
import pytest
import torch

from common.compute.keeping import (
    KeepConfig,
    _batch,
    cauchy_logits,
    cauchy_q,
    draw_among,
    draw_positives,
    initial_encoder,
    keep_loss,
    noise_bank,
    noise_offsets,
    place,
    place_positives,
    place_step,
    refine,
    refine_step,
    squared_distances,
    train_keeping,
)
from common.compute.neighbors import knn_rows, prepare
from common.compute.training import encode, load_trained
from tests.checkpoints import first_checkpoint


def test_cauchy_logits_by_hand():
    a = torch.tensor([[0.0, 0.0]])
    z = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 1.0]])
    # q = 1/(1+d^2): d^2 = 0, 9, 2
    assert torch.allclose(cauchy_logits(a, z), torch.tensor([[0.0, -math.log(10), -math.log(3)]]))


def test_loss_by_hand():
    # two anchors 3 apart, each with its positive on top of it: q(anchor, own positive) = 1,
    # q to the other anchor and to the other positive = 1/(1+9) = 0.1; the anchor itself is not a candidate
    a = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    p = a.clone()
    assert keep_loss(a, p, "infonce").item() == pytest.approx(math.log(1.2), rel=1e-6)  # -log(1 / 1.2)
    # neg: -log q(pos) = 0, plus the mean over the 2 negatives of -log(1 - 0.1)
    assert keep_loss(a, p, "neg").item() == pytest.approx(-math.log(0.9), rel=1e-6)
    # moving the positives away raises both losses
    far = p + torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    assert keep_loss(a, far, "infonce") > keep_loss(a, p, "infonce")
    assert keep_loss(a, far, "neg") > keep_loss(a, p, "neg")
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        keep_loss(a, p, "mse")


def test_attraction_weighs_the_pull_by_hand():
    # anchors (0,0) and (3,0), each positive 1 above its anchor: q(anchor, own positive) = 1/2;
    # for anchor 0 the other anchor has d^2 = 9 (q = 1/10) and the other positive d^2 = 10 (q = 1/11),
    # and anchor 1 is its mirror image, so both rows give the same loss
    a = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    p = a + torch.tensor([0.0, 1.0])
    rest = 0.5 + 0.1 + 1 / 11  # every candidate but the anchor itself
    for pull in (1.0, 1.3, 2.0):
        want = pull * math.log(2) + math.log(rest)
        assert keep_loss(a, p, "infonce", pull).item() == pytest.approx(want, rel=1e-6)
        want = pull * math.log(2) - (math.log(0.9) + math.log(10 / 11)) / 2
        assert keep_loss(a, p, "neg", pull).item() == pytest.approx(want, rel=1e-6)
    assert keep_loss(a, p).item() == pytest.approx(math.log(2 * rest), rel=1e-6)  # the default: 1
    # at 0.9 (the loss at 1 less 0.1 of the pull) InfoNCE has no minimum: spreading the codes out lowers it
    spread = [keep_loss(a * t, p * t, "infonce", 1.0).item() - 0.1 * math.log1p(t * t) for t in (1, 10, 100)]
    assert spread[0] > spread[1] > spread[2]
    with pytest.raises(ValueError, match="attraction must be at least 1"):
        keep_loss(a, p, "infonce", 0.9)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="unknown loss 'tsne'"):
        KeepConfig(loss="tsne")
    with pytest.raises(ValueError, match="positives must be at least 1"):
        KeepConfig(positives=0)
    for bad in (0.5, float("nan")):
        with pytest.raises(ValueError, match="attraction must be at least 1"):
            KeepConfig(attraction=bad)
    with pytest.raises(ValueError, match="final_positives must be at least 1"):
        KeepConfig(final_positives=0)
    assert KeepConfig().attraction == 1.3  # relu_keep's, chosen by measurement (README)
    assert (KeepConfig().positives, KeepConfig().final_positives) == (15, 5)  # likewise
    for bad in (-0.1, 10.5, float("nan")):
        with pytest.raises(ValueError, match=r"noise must be in \[0, 10\]"):
            KeepConfig(noise=bad)
    with pytest.raises(ValueError, match="batch_size must be at most 2048 with noise"):
        KeepConfig(batch_size=4096)
    assert KeepConfig(batch_size=4096, noise=0).batch_size == 4096  # no bank, no limit
    assert KeepConfig().noise == 0.3  # likewise


def test_positives_narrow_linearly_from_first_to_last_epoch():
    cfg = KeepConfig(epochs=11, positives=15, final_positives=5)  # one neighbour fewer each epoch
    assert [cfg.positives_at(e) for e in range(1, 12)] == [15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5]
    cfg = KeepConfig(epochs=5, positives=15, final_positives=5)  # 15, 12.5, 10, 7.5, 5: halves to even
    assert [cfg.positives_at(e) for e in range(1, 6)] == [15, 12, 10, 8, 5]
    assert [KeepConfig(epochs=4, final_positives=15).positives_at(e) for e in range(1, 5)] == [15] * 4
    assert KeepConfig(epochs=1).positives_at(1) == 15  # one epoch: the first epoch's
    assert KeepConfig(positives=3, final_positives=7).columns == 7  # widening is allowed; the table must hold 7


def test_positives_come_from_the_first_m_neighbours():
    nbr = torch.arange(40).reshape(4, 10)  # row i: ids 10i .. 10i+9
    anchors = torch.tensor([0, 1, 2, 3, 1])
    p = draw_positives(nbr, anchors, 3, seed=0, epoch=1)
    assert all(10 * int(a) <= int(q) < 10 * int(a) + 3 for a, q in zip(anchors, p, strict=True))
    assert p[1] == p[4]  # one draw per sample and epoch
    assert torch.equal(p, draw_positives(nbr, anchors, 3, seed=0, epoch=1))


def test_the_noise_is_on_the_anchors_only_and_drawn_from_the_seed():
    x = torch.arange(12.0).reshape(4, 3)
    center, noise = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([[0.5, -0.5, 2.0]])
    batch = _batch(x, torch.tensor([2, 0, 3]), 1, center, noise)  # one anchor (row 2), two positives
    assert batch.tolist() == [[5.5, 5.5, 9.0], [-1.0, 0.0, 1.0], [8.0, 9.0, 10.0]]
    assert torch.equal(_batch(x, torch.tensor([2, 0]), 1, center, torch.empty(0, 3)), x[[2, 0]] - center)
    bank = noise_bank(seed=0, noise=0.3)
    assert bank.shape == (2048, 784) and abs(float(bank.std()) - 0.3) < 0.002 and abs(float(bank.mean())) < 0.002
    assert torch.equal(bank, noise_bank(seed=0, noise=0.3)) and not torch.equal(bank, noise_bank(seed=1, noise=0.3))
    offsets = noise_offsets(seed=0, epoch=1, steps=500, batch_size=256)
    assert len(offsets) == 500 and 0 <= min(offsets) and max(offsets) <= 2048 - 256  # every run of rows fits
    assert len(set(offsets)) > 300  # spread over the bank
    assert offsets == noise_offsets(seed=0, epoch=1, steps=500, batch_size=256)  # what a resume draws
    assert offsets != noise_offsets(seed=0, epoch=2, steps=500, batch_size=256)


def test_noise_changes_the_training_and_none_draws_no_bank(small, monkeypatch):
    from common.compute import keeping

    x, nbr = small
    cfg = KeepConfig(epochs=1, batch_size=128, noise=0)
    quiet, quiet_ck = train_keeping(x, nbr, cfg)
    noisy, noisy_ck = train_keeping(x, nbr, dataclasses.replace(cfg, noise=0.3))
    assert noisy_ck.losses != quiet_ck.losses and not torch.equal(encode(noisy, x), encode(quiet, x))
    monkeypatch.setattr(keeping, "noise_bank", None)  # noise 0 must not call it: the steps of before the noise
    again, again_ck = train_keeping(x, nbr, cfg)
    assert again_ck.losses == quiet_ck.losses and torch.equal(encode(again, x), encode(quiet, x))


def _table(points: np.ndarray, k: int) -> np.ndarray:
    return knn_rows(prepare(points, "l2"), 0, points.shape[0], k).ids


def test_two_separated_clusters_stay_separated():
    # two clusters of 200 images: a dark and a bright half-image, each with its own noise
    rng = np.random.default_rng(0)
    img = np.zeros((400, 784), np.uint8)
    img[:200, :392] = 200
    img[200:, 392:] = 200
    img = np.clip(img.astype(int) + rng.integers(-40, 41, img.shape), 0, 255).astype(np.uint8)
    nbr = _table(img, 10)
    assert (nbr[:200] < 200).all() and (nbr[200:] >= 200).all()  # the pixel space keeps them apart
    x = torch.from_numpy(img).float().div(255).mul(2).sub(1)
    model, ck = train_keeping(x, nbr, KeepConfig(epochs=10, batch_size=64, positives=10))
    codes = encode(model, x).numpy()
    code_nbr = _table(codes, 10)
    cluster = np.arange(400) >= 200
    assert (cluster[code_nbr] == cluster[:, None]).mean() > 0.99  # neighbours in the code: own cluster
    a, b = codes[:200], codes[200:]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    assert gap > 2 * max(a.std(0).max(), b.std(0).max())
    assert ck.losses[-1] < ck.losses[0]


@pytest.fixture(scope="module")
def small(mnist):
    x = mnist.scaled()[:1000]
    return x, _table(mnist.images[:1000], 15)


def test_listed_neighbours_end_nearer_than_random_samples(small):
    x, nbr = small
    before = encode(initial_encoder(0), x).numpy()
    model, _ = train_keeping(x, nbr, KeepConfig(epochs=15, batch_size=128))
    after = encode(model, x).numpy()
    rng = np.random.default_rng(1)
    rand = rng.integers(0, 1000, size=nbr.shape)

    def ratio(c: np.ndarray) -> float:  # mean distance to the listed neighbours / to random samples
        d = lambda ids: np.linalg.norm(c[:, None, :] - c[ids], axis=2).mean()  # noqa: E731
        return d(nbr) / d(rand)

    assert ratio(after) < 0.35 < ratio(before)


def test_training_is_seeded_and_resumes_to_the_same_bits(small):
    x, nbr = small
    cfg = KeepConfig(epochs=3, batch_size=128, seed=5)
    m1, c1 = train_keeping(x, nbr, cfg)
    m2, c2 = train_keeping(x, nbr, cfg)
    assert c1.losses == c2.losses and torch.equal(encode(m1, x), encode(m2, x))
    first = first_checkpoint(lambda hook: train_keeping(x, nbr, cfg, on_epoch_end=hook))
    assert first.epoch == 1
    m3, c3 = train_keeping(x, nbr, cfg, resume=first)
    assert c3.losses == c1.losses and torch.equal(encode(m3, x), encode(m1, x))


def test_the_encoder_sees_each_image_less_its_training_sets_mean_image(small):
    x, nbr = small
    model, ck = train_keeping(x, nbr, KeepConfig(epochs=1, batch_size=128))
    assert torch.allclose(model.center, x.double().mean(0).float(), rtol=0, atol=1e-6)
    assert torch.equal(ck.model_state["center"], model.center)
    with torch.no_grad(), one_thread():
        assert torch.equal(encode(model, x), model.encoder(x - model.center))  # what the stored codes are
    assert not torch.equal(encode(model, x), encode(load_trained("relu_keep", _without_center(ck.model_state)), x))


@contextlib.contextmanager
def one_thread():
    """A forward pass on one thread, as ``encode`` runs one on the CPU: a GEMM's last bit can depend on how
    many threads share it (on an Intel Xeon, family 6 model 207, 2 threads and 1 differ; on AMD's Zen 3
    and Zen 4 they did not), so codes are compared bit for bit only at the same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _without_center(state: dict) -> dict:
    return {k: v for k, v in state.items() if k != "center"}


def test_weights_and_checkpoints_stored_before_the_center_existed_keep_their_meaning(small, monkeypatch):
    """relu_keep's weights stored before 2026-11-29 were trained on the image as it is: they load with a
    center of 0 and give the codes they gave, and such a checkpoint resumes uncentred, to the bits of a
    run that never centred."""
    from common.compute import keeping

    x, nbr = small
    old = _without_center(initial_encoder(4).state_dict())
    with torch.no_grad(), one_thread():
        assert torch.equal(encode(load_trained("relu_keep", old), x), initial_encoder(4).encoder(x))
    monkeypatch.setattr(keeping, "mean_image", lambda x: torch.zeros(x.shape[1]))  # as before the center
    cfg = KeepConfig(epochs=3, batch_size=128, seed=4)
    plain, plain_ck = train_keeping(x, nbr, cfg)
    first = first_checkpoint(lambda hook: train_keeping(x, nbr, cfg, on_epoch_end=hook))
    monkeypatch.undo()
    first = dataclasses.replace(first, model_state=_without_center(first.model_state))
    resumed, resumed_ck = train_keeping(x, nbr, cfg, resume=first)
    assert resumed_ck.losses == plain_ck.losses and not resumed.center.any()
    assert torch.equal(encode(resumed, x), encode(plain, x))


@pytest.mark.parametrize(("attraction", "noise"), [(1.0, 0.0), (1.3, 0.3)])
def test_the_compiled_step_trains_to_the_same_bits_as_autograd(small, monkeypatch, attraction, noise):
    """The CPU runs each InfoNCE step as one compiled call with a hand-written backward: the same losses
    and weights as autograd's step, with a partial last batch and through a resume, with noise and without."""
    from common.compute import keeping

    x, nbr = small
    cfg = KeepConfig(epochs=3, batch_size=128, seed=3, attraction=attraction, noise=noise)  # 1000 = 7 x 128 + 104
    calls = []
    compiled_step = keeping._compiled_step

    def counted(*args):
        step = compiled_step(*args)
        if step is None:
            return None
        return lambda ids, nb, noise: calls.append(nb) or step(ids, nb, noise)

    monkeypatch.setattr(keeping, "_compiled_step", counted)
    fast, fast_ck = train_keeping(x, nbr, cfg)
    first = first_checkpoint(lambda hook: train_keeping(x, nbr, cfg, on_epoch_end=hook))
    resumed, resumed_ck = train_keeping(x, nbr, cfg, resume=first)
    assert len(calls) == (3 * 8 - 1) + (8 - 1) + (2 * 8 - 1) and 104 in calls  # all but each run's first step
    monkeypatch.setattr(keeping, "_compiled_step", lambda *args: None)
    plain, plain_ck = train_keeping(x, nbr, cfg)
    assert fast_ck.losses == plain_ck.losses == resumed_ck.losses
    for m in (fast, resumed):
        for (name, a), b in zip(m.state_dict().items(), plain.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_a_table_that_does_not_fit_is_refused(small):
    x, nbr = small
    with pytest.raises(ValueError, match=r"need a \(1000, >= 15\) neighbour table"):
        train_keeping(x, nbr[:, :5], KeepConfig())


def test_the_study_caps_the_positives_at_its_table_k():
    from common.study.config import StudyConfig
    from common.study.stages import keep_config

    assert (keep_config(StudyConfig()).positives, keep_config(StudyConfig()).final_positives) == (15, 5)
    small = keep_config(StudyConfig(k=3, ks=[1, 3]))  # a table of 3 neighbours: positives among them all
    assert (small.positives, small.final_positives, small.columns) == (3, 3, 3)


def test_the_refinements_gradient_is_autograds_of_the_same_loss():
    # free codes, a batch whose ids repeat (an anchor that is another's positive, a positive twice):
    # the hand-written gradient of each row, summed over its appearances, is autograd's of keep_loss
    z = torch.randn(12, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    ids = torch.tensor([0, 1, 2, 3, 4, 1, 5, 5, 6, 7])  # anchors 0..4, positives 1, 5, 5, 6, 7
    loss, rows, g = refine_step(z, ids, 5, 1.0)
    leaf = z.clone().requires_grad_()
    c = leaf[ids]
    want = keep_loss(c[:5], c[5:], "infonce", 1.0)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)
    assert rows.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    torch.testing.assert_close(g, leaf.grad[rows], rtol=1e-10, atol=1e-12)
    # at pull weight 1.3 too
    leaf.grad = None
    keep_loss(leaf[ids][:5], leaf[ids][5:], "infonce", 1.3).backward()
    torch.testing.assert_close(refine_step(z, ids, 5, 1.3)[2], leaf.grad[rows], rtol=1e-10, atol=1e-12)


def test_placing_an_unseen_codes_gradient_is_autograds():
    # by hand: one new code at (0,0), its positive at (1,0), one other candidate at (0,2):
    # loss = log(1+1) + log(1/2 + 1/5); the map's codes do not move
    y, pos, others = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[1.0, 0.0]], dtype=torch.float64), \
        torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    loss, g = place_step(y, pos, others)
    assert loss.item() == pytest.approx(math.log(2) + math.log(0.7), rel=1e-12)
    leaf = y.clone().requires_grad_()
    q = 1 / (1 + torch.cdist(leaf, torch.cat([pos, others])).square())
    (torch.log1p((leaf - pos).square().sum(1)) + torch.log(q.sum(1))).mean().backward()
    torch.testing.assert_close(g, leaf.grad, rtol=1e-10, atol=1e-12)


def test_refining_keeps_two_clusters_apart_and_draws_listed_neighbours_nearer():
    # two clusters of 60 samples, each a line in "pixel space" (sample i of a cluster at position i):
    # each sample's listed neighbours are its 8 nearest along its line. The codes start as two blobs,
    # each sample at a random place in its cluster's: the codes' own 8 nearest share about 8/60 of
    # the list. Refining draws each sample beside its listed ones and keeps the two clusters apart
    rng = np.random.default_rng(0)
    pos = np.arange(120) % 60
    nbr = np.stack([np.argsort(np.abs(pos - pos[i]) + 1000 * ((np.arange(120) >= 60) != (i >= 60))
                               + 1e-3 * np.arange(120), kind="stable")[1:9] for i in range(120)])
    codes = rng.normal(size=(120, 2)).astype(np.float32)
    codes[60:, 0] += 8
    overlap = lambda c: np.mean([len(set(a) & set(b)) / 8 for a, b in zip(_table(c, 8), nbr, strict=True)])  # noqa: E731
    cfg = KeepConfig(batch_size=32, positives=8, final_positives=4)
    out, losses = refine(codes, nbr, cfg, 60)
    cluster = np.arange(120) >= 60
    assert (cluster[_table(out, 8)] == cluster[:, None]).mean() > 0.99
    assert overlap(codes) < 0.25 and overlap(out) > 0.5
    assert losses[-1] < losses[0]
    again, again_losses = refine(codes, nbr, cfg, 60)  # seeded: the same bits
    assert np.array_equal(again, out) and again_losses == losses


def test_the_free_points_kernel_is_the_losss_kernel_to_the_bit():
    # cauchy_q works in place on one buffer; the values must be keep_loss's q exactly, or the refinement's
    # codes would move with the rewrite: random codes, coincident ones (rounding may put their d^2 below 0:
    # the clamp) and far ones (q near 0)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(64, 2, generator=g) * 30
    z = torch.cat([a[:8], torch.randn(120, 2, generator=g) * 30, a[:8] + 1e-4])
    q = cauchy_q(a, z)
    assert torch.equal(q, torch.reciprocal(1 + squared_distances(a, z)))
    assert ((q > 0) & (q <= 1)).all() and q[:8, :8].diagonal().gt(0.99).all()


def test_an_unseen_sample_is_pulled_to_its_first_neighbours_and_to_the_unseen_samples_that_list_it():
    # a map of 4 rows (ids 0..3); 3 unseen samples (ids 4, 5, 6), m = 2. Sample 0 lists map rows 1, 2;
    # sample 1 lists map row 3 and unseen sample 0 (id 4); sample 2 lists unseen samples 1 (id 5) and 0
    # (id 4), then map row 0 (beyond m). By hand: sample 0 gets 1, 2 and, back from 1 and 2, ids 5, 6;
    # sample 1 gets 3, 4 and, back from 2, id 6; sample 2 gets 4, 5 and nothing back (none lists it).
    nbr = np.array([[1, 2, 0], [3, 4, 0], [5, 4, 0]])
    ptr, ids = place_positives(nbr, 4, 2)
    lists = [ids[ptr[i]:ptr[i + 1]].tolist() for i in range(3)]
    assert lists == [[1, 2, 5, 6], [3, 4, 6], [4, 5]]
    # a pair listed both ways is kept once: samples 0 and 1 list each other
    ptr, ids = place_positives(np.array([[5], [4]]), 4, 1)
    assert [ids[ptr[i]:ptr[i + 1]].tolist() for i in range(2)] == [[5], [4]]
    # each draw is one of the sample's own, every one of them drawn in time, seeded
    ptr, ids = place_positives(nbr, 4, 2)
    draws = torch.stack([draw_among(ptr, ids, 0, e) for e in range(200)])
    for i in range(3):
        assert set(draws[:, i].tolist()) == set(lists[i])
    assert torch.equal(draw_among(ptr, ids, 0, 5), draw_among(ptr, ids, 0, 5))
    with pytest.raises(ValueError, match=r"need a \(3, >= 4\) neighbour table"):
        place_positives(nbr, 4, 4)


def test_placing_unseen_samples_draws_them_to_their_neighbours_and_leaves_the_map_alone():
    # a map of two clusters, around (0, 0) and (10, 0); three new samples start between them (as an
    # encoder would put them: near, not on, their place), listed beside cluster B, A and B
    rng = np.random.default_rng(1)
    ref = np.concatenate([rng.normal(size=(50, 2)), rng.normal(size=(50, 2)) + [10, 0]]).astype(np.float32)
    nbr = np.array([[50 + j for j in range(5)], list(range(5)), [60 + j for j in range(5)]])
    start = np.array([[6, 1], [4, 1], [6, -1]], np.float32)
    before = ref.copy()
    cfg = KeepConfig(batch_size=2)  # place takes its positives from its own argument
    out = place(start, ref, nbr, cfg, 100, lr=0.1, positives=5)
    assert np.array_equal(ref, before)
    listed = lambda c: np.linalg.norm(c[:, None, :] - ref[nbr], axis=2).mean(1)  # noqa: E731
    assert (listed(out) < 0.8 * listed(start)).all()
    side = np.linalg.norm(out[:, None, :] - np.array([[0, 0], [10, 0]])[None], axis=2).argmin(1)
    assert side.tolist() == [1, 0, 1] and (np.abs(out[:, 0] - [10, 0, 10]) < 2.5).all()
    # an unseen sample may list another unseen one (ids past the map's rows): it follows it
    out2 = place(np.array([[6, 0], [5, 3]], np.float32), ref, np.array([[50] * 5, [100] * 5]), cfg, 100, lr=0.1,
                 positives=5)
    assert np.linalg.norm(out2[1] - out2[0]) < 0.5 * np.linalg.norm([1, 3])


def test_the_study_refines_the_map_for_its_epochs_after_a_share_of_them_on_the_encoder():
    from common.study.config import StudyConfig
    from common.study.stages import keep_config

    assert (keep_config(StudyConfig()).epochs, keep_config(StudyConfig()).refine_epochs) == (30, 100)
    assert (keep_config(StudyConfig(epochs=1)).epochs, keep_config(StudyConfig(epochs=1)).refine_epochs) == (1, 1)
    for bad, match in (({"refine_epochs": -1}, "refine_epochs must be at least 0"),
                       ({"refine_lr": 0.0}, r"refine_lr must be in \(0, 1\]"),
                       ({"refine_lr": float("nan")}, "refine_lr must be in")):
        with pytest.raises(ValueError, match=match):
            KeepConfig(**bad)
