"""The street world: targets, per-cell labels and the reading of a label grid agree with each other."""

from __future__ import annotations

import numpy as np
import pytest

from vlx.data.street import (ABSENT_CLASSES, FIELD_ID, FIELDS, GLYPH_ID, GLYPHS, GRID, LABELS, boundaries, read_grid,
                             sign_sheet, street_scene)
from vlx.data.street_text import _hours_lines, _wrap


def _scenes(n: int, size: int = 224):
    return [street_scene(np.random.default_rng([5, i]), size) for i in range(n)]


def test_labels_spell_every_field_of_the_target():
    """What the target says is drawn, glyph by glyph, where the labels say: reading the
    ground-truth grid gives back every name, house number, street, phone, website and hours line."""
    seen = {name: 0 for name in FIELDS}
    for img, pois, labels in _scenes(150):
        assert img.size == (224, 224) and labels.shape == (len(LABELS), GRID, GRID) and labels.dtype == np.uint8
        read = read_grid(labels[0], labels[1])
        for p in pois:
            assert p["name"] in read["name"]
            if p["address"]["house_number"]:
                assert p["address"]["house_number"] in read["house_number"]
            for key in ("phone", "website"):
                if p[key]:
                    assert p[key] in read[key]
            lines = ["OPEN 24H"] if p["open_24h"] else [line for h in p["opening_hours"] for line in _hours_lines(h)]
            for line in lines:
                assert line in read["hours"]
        if pois and pois[0]["address"]["street"]:
            assert read["street"] == [pois[0]["address"]["street"]]
        # No text of any field that is not in the target (letting signs and residential numbers have no field).
        assert len(read["name"]) == len(pois)
        assert len(read["house_number"]) == sum(bool(p["address"]["house_number"]) for p in pois)
        # Shop labels cover each storefront and name its category.
        shop_ids = sorted(set(np.unique(labels[2])) - {0})
        assert len(shop_ids) <= len(pois) and (not pois or shop_ids)
        for name in FIELDS:
            seen[name] += len(read[name])
    assert all(seen.values()), seen  # every field occurs


def test_storefront_plane_numbers_the_shops_left_to_right_and_marks_their_seam():
    kinds = set()
    for img, pois, labels in _scenes(60):
        shop, storefront = labels[2], labels[3]
        assert np.array_equal(shop > 0, storefront > 0)  # the same cells: those of a storefront
        assert sorted(set(np.unique(storefront)) - {0}) == list(range(1, len(pois) + 1))
        seam = boundaries(storefront)
        if len(pois) == 2:
            left = np.nonzero(storefront == 1)[1].max()
            assert left + 1 == np.nonzero(storefront == 2)[1].min()
            assert set(np.nonzero(seam)[1]) == {left, left + 1} and seam.sum() == 2 * 12
            assert not (labels[0][seam] > 0).any()  # names keep a cell free on each side
        else:
            assert not seam.any()
        kinds.add(len(pois))
    assert kinds == {0, 1, 2}


def test_absent_plane_says_which_storefront_goes_without_a_plate_and_the_facade_without_a_plaque():
    kinds = set()
    for img, pois, labels in _scenes(80):
        storefront, absent = labels[3], labels[4]
        assert np.array_equal(absent > 0, storefront > 0) and absent.max() < ABSENT_CLASSES
        for k, poi in enumerate(pois):
            values = set(np.unique(absent[storefront == k + 1]))
            want = 1 + (poi["address"]["house_number"] is None) + 2 * (poi["address"]["street"] is None)
            assert values == {want}, (k, poi, values)
            kinds.add(want)
    assert kinds == {1, 2, 3, 4}


def test_glyphs_sit_inside_their_cells():
    """A cell labelled with a glyph holds ink that stands out from the sign behind it: some pixel
    differs from the cell's median colour by more than 60 levels. (Not the cell's spread: a `.` of a
    website covers four pixels, legible yet with a standard deviation of 11.)"""
    for img, _, labels in _scenes(20):
        pixels = np.asarray(img, dtype=np.float32)
        cell = 224 // GRID
        for r, c in zip(*np.nonzero(labels[0])):
            patch = pixels[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].reshape(-1, 3)
            contrast = np.abs(patch - np.median(patch, axis=0)).max()
            assert contrast > 60, (r, c, GLYPHS[labels[0, r, c] - 1], contrast)


def test_scenes_are_deterministic_and_scale_with_the_grid():
    a = street_scene(np.random.default_rng(3), 224)
    b = street_scene(np.random.default_rng(3), 224)
    assert a[1] == b[1] and np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and np.array_equal(a[2], b[2])
    big = street_scene(np.random.default_rng(3), 336)
    assert big[0].size == (336, 336) and big[1] == a[1] and np.array_equal(big[2], a[2])
    with pytest.raises(ValueError, match="multiple of the 16-cell grid"):
        street_scene(np.random.default_rng(3), 230)


def test_scene_mix_and_sheets():
    counts = [len(pois) for _, pois, _ in _scenes(200)]
    assert counts.count(1) > counts.count(2) > 0 and counts.count(0) > 0
    glyphs_scene = np.mean([(lab[0] > 0).sum() for _, _, lab in _scenes(30)])
    sheets = [sign_sheet(np.random.default_rng(i)) for i in range(30)]
    assert np.mean([(lab[0] > 0).sum() for _, lab in sheets]) > 1.5 * glyphs_scene  # text-dense warm-up
    assert all((lab[2] == 0).all() for _, lab in sheets)


def test_read_grid_joins_wrapped_names_and_splits_at_gaps():
    glyph = np.zeros((GRID, GRID), dtype=np.uint8)
    field = np.zeros((GRID, GRID), dtype=np.uint8)

    def put(row, col, text, name):
        for k, ch in enumerate(text):
            field[row, col + k] = FIELD_ID[name]
            glyph[row, col + k] = GLYPH_ID.get(ch, 0)

    put(1, 1, "Golden", "name")
    put(2, 2, "Fox", "name")
    put(4, 0, "12", "house_number")
    put(4, 4, "7b", "house_number")  # a two-cell gap: another text
    put(6, 0, "030 123", "phone")  # one blank cell: a space inside the text
    read = read_grid(glyph, field)
    assert read["name"] == ["Golden Fox"]
    assert read["house_number"] == ["12", "7b"]
    assert read["phone"] == ["030 123"]


def test_wrap():
    assert _wrap("The Golden Fox", 10, 2) == ["The Golden", "Fox"]
    assert _wrap("Northfieldshire", 10, 2) is None
    assert _wrap("a b c d", 1, 2) is None
