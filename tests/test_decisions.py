"""Decision tokens (`vlx.data.decisions`): where they are, and the weighted loss on padded and packed batches."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vlx.data.decisions import decision_offsets, decision_weights, string_end_offsets
from vlx.data.packing import supervised_loss
from vlx.data.templates import IGNORE_INDEX, encode_spelled

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


def test_string_ends_are_the_closing_quotes_of_values_not_keys():
    text = '{"a":"x,]","b":["pq",null],"c":{"d":""}}'
    ends = string_end_offsets(text)
    assert [text[i] for i in ends] == ['"', '"', '"']
    assert text[ends[0] - 4:ends[0]] == '"x,]' and text[ends[1] - 3:ends[1]] == '"pq' and text[ends[2] - 1] == '"'
    escaped = '{"n":"Mill \\"A\\""}'
    assert string_end_offsets(escaped) == [len(escaped) - 2]
    with pytest.raises(ValueError):
        string_end_offsets('{"a":"x"')


@pytest.mark.parametrize("spell", [(), ("name",)])
def test_string_ends_add_the_closing_tokens_and_nothing_else(tiny, spell):
    tok = tiny[1].tokenizer
    ids = encode_spelled(tok, ANSWER, spell) + [tok.eos_token_id]
    plain = decision_weights(tok, ids, ids, ANSWER, 4.0)
    ends = decision_weights(tok, ids, ids, ANSWER, 4.0, string_ends=True)
    assert all(e >= p for p, e in zip(plain, ends))
    added = [k for k, (p, e) in enumerate(zip(plain, ends)) if e > p]
    # One token per string value (two names, a phone, a day) closes it; none of them a copied character.
    # The day's `"}` was weighted already: the `]` after it opens the next token, so it made that choice.
    assert len(added) == 3
    assert all('"' in tok.decode([ids[k]]) for k in added), [tok.decode([ids[k]]) for k in added]
    heavy = "".join(tok.decode([i]) for i, w in zip(ids, ends) if w > 1)
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


def test_token_ends_match_decoding_every_prefix(tiny):
    """The linear-time ends are where decoding each whole prefix ends, multi-byte characters included."""
    from vlx.data.decisions import token_ends

    tok = tiny[1].tokenizer
    for text in (ANSWER, '{"name":"Café Nörd 東京 ☕","x":null}'):
        for ids in (tok(text, add_special_tokens=False)["input_ids"], encode_spelled(tok, text, ("name",))):
            assert token_ends(tok, ids) == [len(tok.decode(ids[:k + 1])) for k in range(len(ids))]
