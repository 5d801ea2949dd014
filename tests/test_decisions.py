"""Decision tokens (`vlx.data.decisions`): where they are, and the weighted loss on padded and packed batches."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from vlx.data.decisions import decision_offsets, decision_weights
from vlx.data.packing import PackingCollator, supervised_loss
from vlx.data.templates import IGNORE_INDEX, encode_spelled
from vlx.data.dataset import Collator

ANSWER = json.dumps({"pois": [{"name": "Mill \"A\"", "phone": None, "hours": [], "open": False},
                              {"name": "B", "phone": "0123", "hours": [{"d": "mon"}], "open": True}]},
                    separators=(",", ":"))


def test_offsets_are_where_values_and_list_items_begin_and_end():
    text = '{"a":null,"b":[1,22],"c":[],"d":{"e":"x,]"}}'
    got = [text[i] for i in decision_offsets(text)]
    #        root  a     b    1    ,    22   ]    c: [  ]    d    e
    assert got == ["{", "n", "[", "1", ",", "2", "]", "[", "]", "{", '"']
    assert decision_offsets("[]") == [0, 1]
    # Escaped quotes and delimiters inside strings are text, not structure.
    assert [ANSWER[i] for i in decision_offsets(ANSWER)].count("n") == 1  # the one null
    for bad in ('{"a":1', '{"a" 1}', '{"a":1}x', '[1 2]'):
        with pytest.raises(ValueError):
            decision_offsets(bad)


@pytest.mark.parametrize("spell", [(), ("name",)])
def test_weights_land_on_the_branching_tokens(tiny, spell):
    tok = tiny[1].tokenizer
    ids = encode_spelled(tok, ANSWER, spell) + [tok.eos_token_id]
    prompt = tok("<image> what is it?", add_special_tokens=False)["input_ids"]
    input_ids = prompt + ids
    labels = [IGNORE_INDEX] * len(prompt) + ids
    weights = decision_weights(tok, input_ids, labels, ANSWER, 4.0)
    assert len(weights) == len(labels) and set(weights) == {1.0, 4.0}
    assert all(w == 1.0 for w, label in zip(weights, labels) if label == IGNORE_INDEX)
    heavy = "".join(tok.decode([i]) for i, w in zip(input_ids, weights) if w > 1)
    # Every branch is in a weighted token, with the token that stopped before it: null or a value (the
    # first piece of `null`: the rest is forced), false or true, another item or the end of the list.
    for piece in ('":n', '":f', '":t', '":[]', "},{", "}]"):
        assert piece in heavy, (piece, heavy)
    assert heavy.count('":n') == 1
    # The copied text is not: no character of a name, nor the phone digits after the first.
    assert not any(c in heavy for c in "MilB123"), heavy


def test_weights_refuse_tokens_that_do_not_hold_the_answer(tiny):
    tok = tiny[1].tokenizer
    ids = tok('{"a":null}', add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="does not hold the answer"):
        decision_weights(tok, ids, ids, '{"a":1}', 3.0)


def test_weighted_loss_is_the_weighted_token_sum_and_ones_change_nothing():
    torch.manual_seed(0)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 7, 9], [IGNORE_INDEX, 3, 4, IGNORE_INDEX, IGNORE_INDEX]])
    keep = torch.tensor([0, 1, 2, 3])  # positions whose next token is supervised somewhere
    logits = torch.randn(2, len(keep), 12)
    out = type("Out", (), {"logits": logits})()
    weights = torch.tensor([[1.0, 1.0, 3.0, 1.0, 2.0], [1.0, 5.0, 1.0, 1.0, 1.0]])
    per_token = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX,
                                reduction="none")
    expected = (per_token * weights[:, 1:].flatten()).sum() / 5
    assert supervised_loss(out, labels, weights=weights).item() == pytest.approx(expected.item(), rel=1e-6)
    assert supervised_loss(out, labels, num_items_in_batch=10, weights=weights).item() == pytest.approx(
        expected.item() / 2, rel=1e-6)
    assert torch.equal(supervised_loss(out, labels, weights=torch.ones_like(weights)), supervised_loss(out, labels))


def test_packed_and_padded_weighted_batches_give_the_same_loss_and_gradients(tiny, colour_data):
    """Weights travel with their tokens through both collators (packing moves samples between rows)."""
    from vlx.data.dataset import LlavaDataset, prepare
    from vlx.data.formats import load_rows

    model, processor = tiny
    rows = load_rows(str(colour_data / "instruct.json"))
    examples, bad = prepare(rows, processor.tokenizer, template="vicuna_v1", image_token_id=model.config.image_token_id,
                            num_image_tokens=model.config.image_seq_length, max_length=256)
    assert not bad
    picked = [examples[i] for i in (0, 1, 16, 17)]
    gen = torch.Generator().manual_seed(0)
    for ex in picked[:3]:  # the last row keeps no weights: it counts 1 everywhere
        ex.weights = [1.0 + 4.0 * float(torch.rand(1, generator=gen) < 0.3) for _ in ex.labels]
    dataset = LlavaDataset(picked, processor.image_processor)
    items = [dataset[i] for i in range(len(dataset))]
    assert "weights" in items[0] and "weights" not in items[3]
    trainable = copy.deepcopy(model).train()
    pad = processor.tokenizer.pad_token_id
    results = []
    for collate in (Collator(pad, supervised_logits=True), PackingCollator(pad, supervised_logits=True)):
        batch = collate(items)
        labels, weights = batch.pop("labels"), batch.pop("label_weights")
        assert weights.shape == labels.shape
        # Each weighted supervised token keeps its weight: same multiset of (token, weight) pairs.
        pairs = sorted((int(t), float(w)) for t, w in zip(labels[:, 1:].flatten(), weights[:, 1:].flatten())
                       if t != IGNORE_INDEX)
        trainable.zero_grad()
        loss = supervised_loss(trainable(**batch), labels, weights=weights)
        loss.backward()
        results.append((pairs, loss.item(), {n: p.grad.clone() for n, p in trainable.named_parameters()
                                             if p.grad is not None}))
    (pairs_a, loss_a, grads_a), (pairs_b, loss_b, grads_b) = results
    assert pairs_a == pairs_b and any(w > 1 for _, w in pairs_a)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
