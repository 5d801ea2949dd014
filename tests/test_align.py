"""Projector alignment: text patches regressed onto their glyphs' token embeddings; --projector-init."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlx.config import ConfigError, ModelConfig
from vlx.model import tower
from vlx.model.align import align_projector, glyph_token_ids, load_projector, save_projector
from vlx.model.build import build_llava

MICRO = dict(image_size=64, patch_size=4, hidden_size=32, num_layers=2, num_heads=2, steps=2, batch_size=4,
             n_eval=4, precision="fp32")


@pytest.fixture(scope="module")
def micro_tower(tmp_path_factory):
    """A 16 x 16-patch tower (the street world's grid), barely trained: alignment only needs its shape."""
    path = tmp_path_factory.mktemp("tower") / "t"
    tower.pretrain(tower.TowerConfig(**MICRO), path, work=path.parent / "w", progress=False)
    return str(path)


def test_alignment_moves_only_the_projector_towards_the_glyph_embeddings(micro_tower):
    torch.manual_seed(0)
    model, processor = build_llava(ModelConfig(preset="tiny", vision=micro_tower))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = align_projector(model, processor, steps=40, images=8, batch_patches=256, progress=False)
    assert stats["last_loss"] < 0.5 * stats["first_loss"]
    assert 0.0 <= stats["held_out_glyph_accuracy"] <= 1.0
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)


def test_field_markers_and_the_storefront_seam(micro_tower):
    from vlx.data.street import FIELDS
    from vlx.model.align import field_embeddings

    torch.manual_seed(0)
    model, processor = build_llava(ModelConfig(preset="tiny", vision=micro_tower))
    table = model.get_input_embeddings().weight.detach()
    markers = field_embeddings(processor.tokenizer, table)
    assert markers.shape == (1 + len(FIELDS), table.shape[1]) and not markers[0].any()
    ids = processor.tokenizer.encode(" number", add_special_tokens=False)
    assert torch.allclose(markers[1 + FIELDS.index("house_number")], table[ids].mean(0))
    stats = align_projector(model, processor, steps=40, images=8, batch_patches=256, field_marker=0.5, separator=True,
                            shop_marker=0.5, storefront_marker=0.5, progress=False)
    assert 0.0 <= stats["held_out_shop_marker_accuracy"] <= 1.0
    assert 0.0 <= stats["held_out_storefront_accuracy"] <= 1.0 and stats["storefront_marker"] == 0.5
    assert stats["field_marker"] == 0.5 and stats["separator"] and stats["last_loss"] < 0.5 * stats["first_loss"]
    assert 0.0 <= stats["held_out_separator_accuracy"] <= 1.0
    assert 0.0 <= stats["held_out_field_accuracy"] <= 1.0 and 0.0 <= stats["held_out_glyph_accuracy"] <= 1.0


def test_every_cell_targets_its_glyph_field_shop_word_or_the_seam():
    import numpy as np

    from vlx.data.street import CATEGORY_LIST, FIELD_ID, GLYPH_ID, GLYPHS, street_scene
    from vlx.model.align import Layout, patch_targets

    n_chars, n_fields = 1 + len(GLYPHS), 8
    for seed in range(40):
        _, pois, labels = street_scene(np.random.default_rng([9, seed]), 224)
        if len(pois) == 2:
            break
    target, full = patch_targets(labels[None], Layout(n_chars, n_fields, separator=True))
    target, full = target.view(16, 16), full.view(16, 16)
    glyph, field, shop = labels[:3].astype(int)
    r, c = np.argwhere(field == FIELD_ID["name"])[0]
    assert glyph[r, c] == GLYPH_ID[pois[0]["name"][0]] and target[r, c] == FIELD_ID["name"] * n_chars + glyph[r, c]
    seam = [(r, c) for r in range(1, 13) for c in (7, 8)]  # two shops of 8 columns each
    sep = n_chars * n_fields + len(CATEGORY_LIST)
    assert all(target[r, c] == sep and full[r, c] for r, c in seam)
    r, c = 10, 3  # the left shop's window or door, no text
    assert glyph[r, c] == 0 and field[r, c] == 0
    assert target[r, c] == n_chars * n_fields - 1 + shop[r, c] and not full[r, c]
    assert target[14, 0] == 0  # the pavement: a space
    n_shops = 1 + len(CATEGORY_LIST)
    shaded, _ = patch_targets(labels[None], Layout(n_chars, n_fields, n_shops, separator=True))
    shaded = shaded.view(16, 16)
    r, c = np.argwhere(field == FIELD_ID["name"])[-1]  # a glyph of a name, on its storefront
    assert shaded[r, c] == (shop[r, c] * n_fields + FIELD_ID["name"]) * n_chars + glyph[r, c]
    assert all(shaded[r, c] == n_chars * n_fields * n_shops + len(CATEGORY_LIST) for r, c in seam)
    r, c = 10, 3
    plain, _ = patch_targets(labels[None], Layout(n_chars))  # no markers, no separator
    assert (plain.view(16, 16)[7:9, 1:13] < n_chars + len(CATEGORY_LIST)).all()
    assert plain.view(16, 16)[r, c] == n_chars - 1 + shop[r, c]
    # Storefront markers: the right shop's cells carry a marker, text or not; the left shop's none.
    layout = Layout(n_chars, n_fields, n_fronts=2, separator=True)
    fronted, _ = patch_targets(labels[None], layout)
    content, fld, _, front = (x.view(16, 16) for x in layout.parts(fronted))
    assert front[10, 3] == 0 and front[10, 12] == 1 and front[14, 0] == 0 and front[0, 0] == 0
    assert content[10, 3] == n_chars + shop[10, 3] - 1 and fld[10, 3] == 0
    r, c = np.argwhere(field == FIELD_ID["name"])[-1]  # on the right shop's sign
    assert front[r, c] == 1 and content[r, c] == glyph[r, c] and fld[r, c] == FIELD_ID["name"]
    assert all(content[r, c] == n_chars + len(CATEGORY_LIST) and front[r, c] == (c == 8) for r, c in seam)


def test_absent_markers_give_each_storefront_cell_the_state_of_what_it_goes_without(micro_tower):
    import numpy as np

    from vlx.data.street import GLYPHS, street_scene
    from vlx.model.align import Layout, patch_targets

    n_chars = 1 + len(GLYPHS)
    layout = Layout(n_chars, 8, n_fronts=2, separator=True, n_absent=4)
    seen = set()
    for seed in range(300):
        _, pois, labels = street_scene(np.random.default_rng([9, seed]), 224)
        target, _ = patch_targets(labels[None], layout)
        state = layout.parts(target)[3].view(16, 16).numpy()
        front, absent = labels[3].astype(int), labels[4].astype(int)
        want = np.where(front > 0, (front - 1) + 2 * (absent - 1), 0)
        assert np.array_equal(state, want)
        seen |= set(np.unique(want[front > 0]))
    assert seen == set(range(8))  # both storefronts, with and without plate and plaque

    torch.manual_seed(0)
    model, processor = build_llava(ModelConfig(preset="tiny", vision=micro_tower))
    stats = align_projector(model, processor, steps=40, images=8, batch_patches=256, storefront_marker=1.0,
                            absent_marker=1.0, progress=False)
    assert stats["absent_marker"] == 1.0 and stats["last_loss"] < 0.5 * stats["first_loss"]
    assert 0.0 <= stats["held_out_absent_accuracy"] <= 1.0 and 0.0 <= stats["held_out_storefront_accuracy"] <= 1.0


def test_glyph_tokens_are_single_characters():
    _, processor = build_llava(ModelConfig(preset="tiny"))
    ids = glyph_token_ids(processor.tokenizer)
    assert len(set(ids.tolist())) == len(ids)
    assert processor.tokenizer.decode(ids[:2]) == " A"


def test_projector_file_round_trips_and_starts_stage_one(micro_tower, tmp_path):
    model, processor = build_llava(ModelConfig(preset="tiny", vision=micro_tower))
    with torch.no_grad():
        for p in model.model.multi_modal_projector.parameters():
            p.add_(1.0)
    path = save_projector(model, tmp_path / "projector.safetensors")
    fresh, _ = build_llava(ModelConfig(preset="tiny", vision=micro_tower))
    load_projector(fresh, path)
    for a, b in zip(model.model.multi_modal_projector.parameters(), fresh.model.multi_modal_projector.parameters()):
        assert torch.equal(a, b)
    state = load_file(str(path))
    first = sorted(state)[0]
    state[first] = torch.zeros(3, 3)  # written for another tower or LLM width
    save_file(state, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=f"do not fit this model's projector .*{first}"):
        load_projector(fresh, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="no such file"):
        ModelConfig(preset="tiny", projector_init=str(tmp_path / "missing.safetensors"))


def test_alignment_refuses_a_tower_off_the_street_grid():
    model, processor = build_llava(ModelConfig(preset="tiny"))
    with pytest.raises(ValueError, match="16 x 16 patch grid"):
        align_projector(model, processor, steps=1, progress=False)


def test_shop_words_are_the_llm_embeddings_of_the_category_words():
    from vlx.data.street import CATEGORY_LIST
    from vlx.model.align import category_embeddings

    model, processor = build_llava(ModelConfig(preset="tiny"))
    table = model.get_input_embeddings().weight.detach()
    words = category_embeddings(processor.tokenizer, table)
    assert words.shape == (len(CATEGORY_LIST), table.shape[1])
    ids = processor.tokenizer.encode(" hair salon", add_special_tokens=False)
    assert torch.allclose(words[CATEGORY_LIST.index("hair_salon")], table[ids].mean(0))
    assert len({tuple(w.tolist()) for w in words}) == len(CATEGORY_LIST)  # no two shops read alike


def test_storefront_ordinals_are_the_llm_embeddings_of_their_words():
    from vlx.data.street import MAX_STOREFRONTS
    from vlx.model.align import ORDINAL_WORDS, ordinal_embeddings

    model, processor = build_llava(ModelConfig(preset="tiny"))
    table = model.get_input_embeddings().weight.detach()
    fronts = ordinal_embeddings(processor.tokenizer, table)
    assert fronts.shape == (MAX_STOREFRONTS, table.shape[1]) and not fronts[0].any()
    ids = processor.tokenizer.encode(" " + ORDINAL_WORDS[0], add_special_tokens=False)
    assert torch.allclose(fronts[1], table[ids].mean(0))
