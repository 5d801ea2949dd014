"""Benchmark scorers, ported rule for rule from the scripts that produced LLaVA-1.5's numbers.

Pure functions over strings: no model, no files. Each one names the script it reproduces, and
quirks of those scripts are kept on purpose (a score is only comparable with the paper's if it
is computed the same way); each kept quirk carries a comment.

- VQAv2: `vqaEval.py` of the official VQA API (GT-Vision-Lab/VQA, PythonEvaluationTools).
- TextVQA and VQAv2 submissions: `EvalAIAnswerProcessor` / `TextVQAAccuracyEvaluator` of
  `llava/eval/m4c_evaluator.py` (from facebookresearch/mmf).
- GQA: LLaVA's `scripts/convert_gqa_for_eval.py` normalisation + the official GQA `eval.py`.
- POPE: `llava/eval/eval_pope.py`.
- MME: the official `eval_tool/calculation.py`.
- MMBench: option extraction of the official MMBench evaluator (VLMEvalKit `can_infer`), and
  circular evaluation (a question counts only if every rotation of its options is answered right).
- ScienceQA: `llava/eval/eval_science_qa.py`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# ---------------------------------------------------------------------------------------------
# VQA answer normalisation (official vqaEval.py)

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # noqa: E501 - the official table, entry for entry (including "somebody'd" -> "somebodyd")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
# The official pattern: `(?!<=\d)` is a typo'd lookbehind and is in effect a no-op lookahead, so
# this removes every period not followed by a digit ("yes." -> "yes", "2.5" stays).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")


def process_punctuation(text: str) -> str:
    """vqaEval.processPunctuation: drop punctuation next to a space (or any, if the text has a
    digit-comma-digit), replace it by a space otherwise; then drop periods not followed by a digit."""
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The official code passes re.UNICODE (32) positionally, i.e. as `count`: at most 32 periods go.
    return _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def process_digit_article(text: str) -> str:
    """vqaEval.processDigitArticle: lowercase, number words -> digits, drop articles, add apostrophes."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    # Keys with capitals ("Im", "Ive") can never match after lower(): kept as in the official table.
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(answer: str) -> str:
    """A predicted answer as vqaEval.evaluate normalises it before comparison.

    >>> normalize_vqa_answer("Two dogs.")
    '2 dogs'
    """
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the human answers (usually 10), as vqaEval.evaluate.

    min(1, #matching humans / 3) averaged over the leave-one-out subsets of the human answers.
    The human answers get `process_punctuation` only, and only when they disagree, exactly as
    the official script (released annotations are already normalised).

    >>> vqa_accuracy("Two", ["2"] * 10)
    1.0
    """
    res = normalize_vqa_answer(prediction)
    gts = list(gt_answers)
    if len(set(gts)) > 1:
        gts = [process_punctuation(a) for a in gts]
    return leave_one_out_accuracy(res, gts)


def leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The VQA accuracy: min(1, matches / 3) against each set of the other annotators, averaged.

    >>> leave_one_out_accuracy("2", ["2"] * 3 + ["two"] * 7)
    0.9
    """
    accs = [min(1.0, sum(1 for j, a in enumerate(answers) if j != i and a == prediction) / 3)
            for i in range(len(answers))]
    return sum(accs) / len(accs)


# ---------------------------------------------------------------------------------------------
# EvalAI answer processor (m4c_evaluator.py): TextVQA scoring and VQAv2 submission answers


def evalai_normalize(answer: str) -> str:
    """m4c_evaluator.EvalAIAnswerProcessor: the processing EvalAI applies before VQA scoring.

    >>> evalai_normalize("The poster shows a 10% discount.")
    'poster shows 10% discount'
    """
    answer = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def textvqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """m4c_evaluator.TextVQAAccuracyEvaluator for one question: both sides EvalAI-normalised,
    then the 10-annotator leave-one-out VQA accuracy."""
    answers = [evalai_normalize(a) for a in gt_answers]
    if len(answers) != 10:
        raise ValueError(f"TextVQA scoring expects 10 human answers per question, got {len(answers)}")
    pred = evalai_normalize(prediction)
    return leave_one_out_accuracy(pred, answers)


# ---------------------------------------------------------------------------------------------
# GQA


def gqa_normalize(prediction: str) -> str:
    """LLaVA's convert_gqa_for_eval.py: strip trailing periods and lowercase."""
    return prediction.rstrip(".").lower()


def gqa_correct(prediction: str, answer: str) -> bool:
    """The official GQA eval.py compares the (normalised) prediction to the answer exactly."""
    return gqa_normalize(prediction) == answer


# ---------------------------------------------------------------------------------------------
# POPE (llava/eval/eval_pope.py)


def pope_answer(text: str) -> str:
    """'no' if the first sentence contains the word "No", "no" or "not", else 'yes'.

    >>> pope_answer("No, there is not."), pope_answer("Yes."), pope_answer("There is no dog.")
    ('no', 'yes', 'no')
    """
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive class: yes) and yes-ratio of raw model outputs.

    Labels other than "no" count as yes, as in the reference. Where the reference divides by
    zero (no "yes" predicted, or no yes-labels) the ratio is reported as 0.0.
    """
    preds = [0 if pope_answer(p) == "no" else 1 for p in predictions]
    gold = [0 if label == "no" else 1 for label in labels]
    tp = sum(1 for p, g in zip(preds, gold) if p == 1 and g == 1)
    fp = sum(1 for p, g in zip(preds, gold) if p == 1 and g == 0)
    tn = sum(1 for p, g in zip(preds, gold) if p == 0 and g == 0)
    fn = sum(1 for p, g in zip(preds, gold) if p == 0 and g == 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(preds), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": preds.count(1) / len(preds), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


# ---------------------------------------------------------------------------------------------
# MME (eval_tool/calculation.py)

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_parse(prediction: str) -> str:
    """'yes', 'no' or 'other': an exact yes/no, else "yes"/"no" within the first 4 characters."""
    prediction = prediction.lower()
    if prediction in ("yes", "no"):
        return prediction
    prefix = prediction[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_task_score(pairs: Sequence[Sequence[tuple[str, str]]]) -> dict[str, float]:
    """One MME task: `pairs[k]` is an image's questions as (prediction, gt) tuples (2 per image).

    score = 100 * (accuracy + accuracy+), accuracy+ being the share of images with both right.
    """
    n_questions = n_right = n_both = n_other = 0
    for questions in pairs:
        right = 0
        for prediction, gt in questions:
            parsed = mme_parse(prediction)
            n_other += parsed == "other"
            right += parsed == gt.lower()
        n_questions += len(questions)
        n_right += right
        n_both += right == len(questions)
    acc, acc_plus = n_right / n_questions, n_both / len(pairs)
    return {"acc": acc, "acc_plus": acc_plus, "score": 100 * (acc + acc_plus), "other": n_other,
            "images": len(pairs)}


# ---------------------------------------------------------------------------------------------
# MMBench option extraction (official evaluator's rule stage, VLMEvalKit `can_infer`)

_MMBENCH_REJECT = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)


def _count_choice(splits: list[str], choices, prefix: str = "", suffix: str = "") -> int:
    return sum(1 for c in choices if prefix + c + suffix in splits)


def can_infer_option(answer: str, choices: dict[str, str]) -> str | None:
    """The single option letter standing alone in the answer (after dropping `.()[],:;!*#{}`)."""
    if "Failed to obtain answer via API" in answer:
        return None
    for err in _MMBENCH_REJECT:
        if err in answer:
            return "Z"
    answer_mod = answer
    for c in ".()[],:;!*#{}":
        answer_mod = answer_mod.replace(c, " ")
    splits = [x.strip() for x in answer_mod.split()]
    count = _count_choice(splits, choices)
    if count == 1:
        for ch in choices:
            if ch in splits:
                return ch
    elif count == 0 and _count_choice(splits, {"Z", ""}) == 1:
        return "Z"
    return None


def can_infer_text(answer: str, choices: dict[str, str]) -> str | None:
    """The single option whose text (lowercased) occurs in the answer."""
    answer = answer.lower()
    cands = [k for k, v in choices.items() if str(v).lower() in answer]
    return cands[0] if len(cands) == 1 else None


def mmbench_extract(answer: str, choices: dict[str, str]) -> str | None:
    """Option letter for a free-form answer, or None when the rules cannot decide.

    The official evaluator then asks a GPT judge; vlx stops at the rules and counts an
    undecided answer as wrong (reported as `unparsed`). With the multiple-choice format prompt
    a trained model answers with the letter, which the first rule resolves.

    >>> mmbench_extract("B. a cat", {"A": "dog", "B": "cat"})
    'B'
    """
    return can_infer_option(str(answer), choices) or can_infer_text(str(answer), choices)


# ---------------------------------------------------------------------------------------------
# ScienceQA (llava/eval/eval_science_qa.py)

SQA_OPTIONS = ("A", "B", "C", "D", "E")


def sqa_parse(prediction: str) -> str:
    """The option letter eval_science_qa.py reads from a prediction, or 'FAILED'."""
    text = prediction.replace("\n", ". ")
    if text.strip() in SQA_OPTIONS:
        return text.strip()
    if len(text) >= 3 and text[0] in SQA_OPTIONS and text[1:3] == ". ":
        return text[0]
    if "The answer is " in text:
        match = re.search(r"The answer is ([A-E])\.", text) or re.search(r"The answer is ([A-E])", text)
        if match:
            return match.group(1)
    return "FAILED"


def sqa_pred_index(prediction: str, n_choices: int) -> int:
    """Index of the chosen option (eval_science_qa.get_pred_idx on the parsed letter), -1 if none."""
    letter = sqa_parse(prediction)
    return SQA_OPTIONS.index(letter) if letter in SQA_OPTIONS[:n_choices] else -1


__all__ = [
    "normalize_vqa_answer", "process_punctuation", "process_digit_article", "vqa_accuracy", "evalai_normalize",
    "textvqa_accuracy", "gqa_normalize", "gqa_correct", "pope_answer", "pope_metrics", "mme_parse",
    "mme_task_score", "MME_PERCEPTION", "MME_COGNITION", "can_infer_option", "can_infer_text", "mmbench_extract",
    "sqa_parse", "sqa_pred_index",
]
