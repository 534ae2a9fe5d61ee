"""Synthetic scenes: deterministic from the seed, held-out combinations really held out, varied captions."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from mope_deploy.data import synthetic as syn
from mope_deploy.data.datasets import DatasetError, load_synthetic


def _pixels(img) -> np.ndarray:
    return np.asarray(img)


def test_same_seed_same_data_other_seed_other_data():
    a_img, a_caps, a_scene = syn.sample(0, "test", 7)
    b_img, b_caps, b_scene = syn.sample(0, "test", 7)
    assert np.array_equal(_pixels(a_img), _pixels(b_img)) and a_caps == b_caps and a_scene == b_scene
    c_img, c_caps, _ = syn.sample(1, "test", 7)
    assert not np.array_equal(_pixels(a_img), _pixels(c_img)) or a_caps != c_caps
    # The stream restarts exactly at any index (what resuming training relies on).
    full = list(itertools.islice(syn.stream(3), 6))
    tail = list(itertools.islice(syn.stream(3, start=4), 2))
    for (ia, ta), (ib, tb) in zip(full[4:], tail):
        assert ta == tb and np.array_equal(_pixels(ia), _pixels(ib))


def test_images_have_the_requested_size_and_show_the_colours():
    img, _, scene = syn.sample(0, "train", 3, size=48)
    assert img.size == (48, 48) and img.mode == "RGB"
    px = _pixels(img).reshape(-1, 3).astype(int)
    for g in scene.groups:  # some pixel is close to each group's colour (jitter is at most +-22 per channel)
        ref = np.array(syn.COLOURS[g.colour])
        assert (np.abs(px - ref).max(axis=1) <= 40).any(), g


def test_held_out_pairs_never_in_training_and_always_in_val_test():
    assert len(syn.HELD_OUT) == 16
    # every colour and every shape still occurs in training, with other partners
    assert {c for c, _ in syn.TRAIN_PAIRS} == set(syn.COLOURS) and {s for _, s in syn.TRAIN_PAIRS} == set(syn.SHAPES)
    for i in range(2000):
        assert not syn.sample_scene(0, "train", i).pairs & syn.HELD_OUT, i
    for split in ("val", "test"):
        for i in range(300):
            assert syn.sample_scene(0, split, i).pairs & syn.HELD_OUT, (split, i)


def test_captions_varied_and_name_what_is_drawn():
    words_by_shape = {s: {w for pair in v for w in pair} for s, v in syn._SHAPE_WORDS.items()}
    all_caps = []
    for i in range(200):
        _, caps, scene = syn.sample(0, "val", i)
        assert len(caps) == syn.CAPTIONS_PER_IMAGE and len(set(caps)) >= 3
        all_caps += caps
        for c in caps:  # every caption names every group's shape (some word for it)
            for g in scene.groups:
                assert any(re.search(rf"\b{w}\b", c.lower()) for w in words_by_shape[g.shape]), (c, g)
    assert len(set(all_caps)) > 0.95 * len(all_caps)
    # phrasing varies: many distinct openings, not a single template
    openings = {" ".join(c.lower().split()[:2]) for c in all_caps}
    assert len(openings) > 30


def test_load_synthetic_fixed_sizes_and_protocol():
    ds = load_synthetic("val", n_images=12)
    assert ds.n_images == 12 and ds.n_captions == 60
    assert ds.txt2img == [i for i in range(12) for _ in range(5)]
    again = load_synthetic("val", n_images=12)
    assert ds.captions == again.captions
    assert syn.SPLIT_SIZES["test"] == 500 and syn.SPLIT_SIZES["val"] == 250


def test_bad_split_is_a_clear_error():
    with pytest.raises(DatasetError, match="train, val, test"):
        load_synthetic("dev")
    with pytest.raises(ValueError, match="positive"):
        load_synthetic("val", n_images=0)


def test_torch_stream_splits_indices_across_workers():
    torch = pytest.importorskip("torch")
    ds = syn.SyntheticStream(seed=0, size=32)
    first = list(itertools.islice(iter(ds), 3))
    ref = list(itertools.islice(syn.stream(0, size=32), 3))
    assert [t for _, t in first] == [t for _, t in ref]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)
    assert next(iter(loader))[1] == ref[0][1]


def _differences(a: syn.Scene, b: syn.Scene) -> int:
    """How many attributes differ (a colour swap between the two groups counts as one change)."""
    n = int(a.texture != b.texture) + int(a.background != b.background)
    if len(a.groups) != len(b.groups):
        return 99
    ga, gb = list(a.groups), list(b.groups)
    if len(ga) == 2 and {g.colour for g in ga} == {g.colour for g in gb} and [g.colour for g in ga] != [g.colour for g in gb]:
        gb = [syn.Group(y.shape, x.colour, y.size, y.count, y.region) for x, y in zip(ga, gb)]
        n += 1
    if len(ga) == 2 and [g.region for g in ga] == [g.region for g in reversed(gb)] and ga[0].region != ga[1].region:
        gb = [syn.Group(y.shape, y.colour, y.size, y.count, x.region) for x, y in zip(ga, gb)]
        n += 1
    for x, y in zip(ga, gb):
        n += sum(getattr(x, f) != getattr(y, f) for f in ("shape", "colour", "size", "count", "region"))
    return n


@pytest.mark.parametrize("split", ["val", "test"])
def test_families_are_minimal_pairs(split):
    """Scenes come in families: each variant differs from its base scene in exactly one attribute."""
    for f in range(40):
        base = syn.sample_scene(0, split, f * syn.FAMILY)
        variants = [syn.sample_scene(0, split, f * syn.FAMILY + k) for k in range(1, syn.FAMILY)]
        assert len({base, *variants}) == syn.FAMILY
        assert all(_differences(base, v) == 1 for v in variants), (base, variants)


def test_torch_stream_with_two_workers_yields_the_same_samples():
    torch = pytest.importorskip("torch")
    ds = syn.SyntheticStream(seed=0, size=16)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = sorted(t for _, t in itertools.islice(iter(loader), 6))
    want = sorted(t for _, t in itertools.islice(syn.stream(0, size=16), 6))
    assert got == want
