"""Scorers against answers whose official scores follow from the official scripts' rules."""

from __future__ import annotations

import pytest

from vlx.eval import scoring


@pytest.mark.parametrize("prediction, gold, expected", [
    ("Two", "2", 1.0),            # number words -> digits
    ("a dog", "dog", 1.0),        # articles dropped
    ("The dog.", "dog", 1.0),     # period stripped, case folded
    ("yes.", "yes", 1.0),
    ("dont", "don't", 1.0),       # contractions get their apostrophe
    ("1,000", "1000", 1.0),       # digit,digit: punctuation removed, not spaced
    ("2.5", "2.5", 1.0),          # a period before a digit stays
    ("none", "0", 1.0),
    ("another", "other", 0.0),    # "an" is only dropped as a whole word
    ("dogs", "dog", 0.0),
])
def test_vqa_accuracy_normalisation(prediction, gold, expected):
    assert scoring.vqa_accuracy(prediction, [gold] * 10) == expected


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out(matches, expected):
    # With k matching humans: k subsets hold k-1 of them, 10-k hold k; min(1, n/3) averaged.
    gts = ["red"] * matches + ["blue"] * (10 - matches)
    assert scoring.vqa_accuracy("red", gts) == pytest.approx(expected)


def test_vqa_accuracy_keeps_official_gt_processing():
    # Disagreeing human answers get punctuation processing: "hot-dog" becomes "hot dog".
    assert scoring.vqa_accuracy("hot dog", ["hot-dog"] * 5 + ["hot dog"] * 5) == 1.0
    # Unanimous answers are compared as released, so the normalised prediction cannot match.
    assert scoring.vqa_accuracy("hot-dog", ["hot-dog"] * 10) == 0.0


def test_normalize_vqa_answer_details():
    assert scoring.normalize_vqa_answer("Is it?  Yes!") == "is it yes"
    assert scoring.normalize_vqa_answer("Im here") == "im here"  # capitalised keys never match (official table)
    assert scoring.normalize_vqa_answer("an apple\tand\nthe pear") == "apple and pear"


def test_evalai_normalize_and_textvqa():
    assert scoring.evalai_normalize("The poster shows a 10% discount.") == "poster shows 10% discount"
    assert scoring.evalai_normalize("Dunkin's") == "dunkin 's"
    # TextVQA normalises the human answers too (unlike vqaEval): "Coca-Cola" == "coca cola".
    assert scoring.textvqa_accuracy("coca cola", ["Coca-Cola"] * 3 + ["coca cola"] * 7) == 1.0
    assert scoring.textvqa_accuracy("pepsi", ["pepsi"] * 2 + ["coke"] * 8) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="10 human answers"):
        scoring.textvqa_accuracy("x", ["x"] * 9)


def test_gqa_exact_match():
    assert scoring.gqa_correct("Yes.", "yes")
    assert scoring.gqa_correct("Left", "left")
    assert not scoring.gqa_correct("a dog", "dog")  # no article stripping in GQA
    assert not scoring.gqa_correct("yes, it is", "yes")


@pytest.mark.parametrize("text, expected", [
    ("No", "no"), ("No.", "no"), ("no", "no"), ("Yes", "yes"), ("Yes, there is.", "yes"),
    ("There is no dog in the image.", "no"), ("It is not there", "no"), ("Yes. But no cat.", "yes"),
    ("Nope", "yes"), ("No, there is not.", "no"), ("Not at all", "yes"),
])
def test_pope_answer(text, expected):
    # Word match on the first sentence: "Nope" and a capitalised "Not" are not in {No, no, not}.
    assert scoring.pope_answer(text) == expected


def test_pope_metrics():
    preds = ["Yes", "Yes", "No", "No", "Yes", "No."]
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    m = scoring.pope_metrics(preds, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(0.5)


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"), ("no", "no"), ("No, it is not.", "no"), ("Yes.", "yes"),
    ("nope", "no"), ("The answer is yes", "other"), ("maybe", "other"),
])
def test_mme_parse(text, expected):
    assert scoring.mme_parse(text) == expected


def test_mme_task_score_sums_accuracy_and_accuracy_plus():
    pairs = [[("Yes", "Yes"), ("No", "No")], [("Yes", "Yes"), ("Yes", "No")]]
    s = scoring.mme_task_score(pairs)
    assert s["acc"] == 0.75 and s["acc_plus"] == 0.5
    assert s["score"] == pytest.approx(125.0)


@pytest.mark.parametrize("answer, expected", [
    ("A", "A"), ("B.", "B"), ("(C)", "C"), ("The answer is A", "A"), ("C. a cat", "C"),
    ("cat", "B"),                 # no letter: the one option whose text occurs
    ("A or B", None),             # two letters: undecided
    ("dog or cat", None),
    ("Cannot determine the answer", "Z"),
])
def test_mmbench_extract(answer, expected):
    assert scoring.mmbench_extract(answer, {"A": "dog", "B": "cat", "C": "a cat on a mat"}) == expected


@pytest.mark.parametrize("text, n_choices, expected", [
    ("B", 2, 1), ("B. apostrophe", 2, 1), ("The answer is C.", 3, 2), ("The answer is C", 3, 2),
    ("E", 3, -1), ("b", 2, -1), ("I think B", 2, -1), ("A\nbecause", 2, 0),
])
def test_sqa_pred_index(text, n_choices, expected):
    assert scoring.sqa_pred_index(text, n_choices) == expected
