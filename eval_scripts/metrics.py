"""Per-item answer metrics for VQA-style benchmarks, as pure functions of (prediction, reference).

Every per-item metric returns a float in [0, 1] (``relaxed_accuracy`` returns a bool for one target);
``METRICS`` maps the names accepted by ``--metric`` to a uniform ``(prediction, answer) -> float``
where ``answer`` is one reference string or a list of them; ``mean_percent`` turns per-item values into
the headline percentage.

What each metric follows, and where we deliberately differ:

``vqa_accuracy`` (VQAv2, OK-VQA, TextVQA, VizWiz)
    The VQA soft accuracy: both the prediction and every reference are normalised (lower case; ``,`` and
    ``?`` dropped; ``'s`` split off; other punctuation removed or turned into spaces; a period removed
    unless a digit follows; number words ``zero``..``ten`` and ``none`` to digits; articles dropped;
    apostrophe-less contractions such as ``dont`` restored), then the score is the mean, over the
    leave-one-out subsets of the references, of ``min(1, matches / 3)`` where ``matches`` counts the
    references in the subset equal to the prediction. With 10 references: 3 agreeing -> 0.9,
    2 -> 0.6, 1 -> 0.3, 4 or more -> 1.0.

    * We normalise exactly as InternVL's scorer does (the EvalAI answer processor in its
      ``eval/vqa/textvqa_eval.py``), which is what its published numbers use. The official
      ``vqaEval.py`` differs in two ways that we do NOT reproduce: it skips punctuation
      normalisation of the references when all of them are identical, and it never applies the
      number/article/contraction step to references. Normalising both sides identically only
      matters for unnormalised references (e.g. ten copies of ``"Yes."`` against the prediction
      ``yes``: official 0.0, ours 1.0), which the released annotation files do not contain.
    * The reference table of contractions has one quirk (``somebody'd`` rewritten to ``somebodyd``)
      that we leave out; since both sides are normalised alike it cannot change a match between
      normalised texts.
    * Other than 10 references (the official scorers require exactly 10): the same leave-one-out mean
      over all n references with the agreement threshold ``min(3, n - 1)``, so that unanimous
      references always give 1.0 (2 references: each leave-one-out subset holds one answer;
      3 references: two agreeing answers suffice). With 11 or more the threshold stays 3. One
      reference: 1.0 on a normalised exact match, else 0.0.

``anls`` (DocVQA, InfographicVQA)
    Average Normalised Levenshtein Similarity, exactly as the RRC evaluation script InternVL runs
    (``infographicsvqa_eval.py``, the DocVQA/InfographicVQA scorer): the edit distance is taken between
    the NORMALISED texts (stripped, lower-cased, runs of whitespace collapsed to one space), but it is
    divided by the length of the longer RAW text (``max(len(reference.upper()), len(prediction.upper()))``,
    the strings as given). Repeated or surrounding spaces therefore lengthen the denominator without adding
    to the distance: ``"new  yrok"`` against ``"new york"`` is ``1 - 2/9``, not ``1 - 2/8``. Per reference
    ``1 - distance / length`` (a length of 0 gives 1); the best reference wins; a similarity below
    ``threshold`` (0.5) scores 0. A similarity of exactly 0.5 is kept (as that script does; the ANLS paper's
    ``NL < tau`` rule would zero it).

``relaxed_accuracy`` (ChartQA)
    Correct when both texts are numbers and the prediction is within ``tolerance`` (5%) of the TARGET,
    relative to the target: ``|p - t| / |t| <= 0.05``. A trailing ``%`` divides by 100 (so ``"50%"``
    and ``"0.5"`` agree, ``"50%"`` and ``"50"`` do not). Anything else, including numbers written
    with thousands separators or units, falls back to case-insensitive equality of the stripped texts.

    * InternVL calls pix2struct's function with prediction and target swapped, so its tolerance is
      relative to the prediction; we do not (target 100, prediction 105.2 is wrong here).
    * A target of 0 needs a prediction of exactly 0 (pix2struct compares the strings then, so ``"0"``
      vs ``"0.0"`` fails there and passes here). ``nan`` and ``inf`` count as text, not numbers.

``exact_match`` (AI2D; InternVL's ``accuracy`` for non-GQA sets)
    1.0 when the stripped, lower-cased prediction equals a stripped, lower-cased reference.

``gqa_accuracy`` (GQA)
    InternVL converts each prediction with ``rstrip('.').lower()`` and GQA's ``eval.py`` then compares it
    with the gold answer exactly. We do the same, also stripping surrounding whitespace on both sides
    and lower-casing the gold answer (GQA's answers are lower case already).
"""
from __future__ import annotations

import functools
import math
import re
from typing import Callable, Iterable, Mapping, Sequence, Union

Answers = Union[str, Sequence[str]]

# --------------------------------------------------------------------------- VQA normalisation

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Removed (or replaced by a space) by the punctuation step. Not in the list, deliberately: the period
# (its own rule), the apostrophe (contractions), ':' '%' '$' '&' '#' '*' and the like (kept as text).
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")
# A period not followed by a digit ("3.5" keeps its point, "yes." and "a.m." lose theirs).
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")

# Canonical contractions of the VQA evaluation. Each is restored from any spelling that lacks exactly
# one of its apostrophes ("dont" -> "don't", "couldnt've" and "couldn'tve" -> "couldn't've"), which
# reproduces the official lookup table. Forms such as "its", "well" or "were" are not listed, so those
# real words are never rewritten.
_CANONICAL_CONTRACTIONS = """
    ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
    haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've
    might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've
    shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll
    someone's something'd something'd've something'll that's there'd there'd've there're there's
    they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's
    what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's
    won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()


def _contraction_table(canonical: Iterable[str]) -> dict[str, str]:
    table: dict[str, str] = {}
    for word in canonical:
        for position, character in enumerate(word):
            if character == "'":
                table[word[:position] + word[position + 1:]] = word
    return table


_CONTRACTIONS = _contraction_table(_CANONICAL_CONTRACTIONS)


def _strip_punctuation(text: str) -> str:
    # A mark touching a space is a separator already ("yes !"): delete it. A mark inside a word
    # ("black-white") becomes a space so the two words stay apart. The test looks at the input text,
    # not the partly cleaned one, as the reference implementation does.
    cleaned = text
    for mark in _PUNCTUATION:
        if mark + " " in text or " " + mark in text:
            cleaned = cleaned.replace(mark, "")
        else:
            cleaned = cleaned.replace(mark, " ")
    return _PERIOD_NOT_DECIMAL.sub("", cleaned)


@functools.lru_cache(maxsize=1 << 16)
def normalize_vqa_answer(text: str) -> str:
    """The VQA answer normalisation (see the module docstring); applied to predictions and references.

    Cached: reference answers repeat across items (10 per question), and normalisation was 70% of
    scoring 100k predictions (bench/overhead.py)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _strip_punctuation(text)
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def _answer_list(answers: Answers) -> list[str]:
    """One reference or several, as a non-empty list of strings (numbers are written as text)."""
    if isinstance(answers, str):
        return [answers]
    if isinstance(answers, (int, float)) and not isinstance(answers, bool):
        return [str(answers)]
    listed = [answer if isinstance(answer, str) else str(answer) for answer in answers]
    if not listed:
        raise ValueError("no reference answers to score against")
    return listed


def vqa_accuracy(prediction: str, answers: Answers) -> float:
    """VQA soft accuracy of one prediction against its annotators' answers (normally 10)."""
    references = [normalize_vqa_answer(answer) for answer in _answer_list(answers)]
    predicted = normalize_vqa_answer(prediction)
    count = len(references)
    if count == 1:
        return 1.0 if predicted == references[0] else 0.0
    # Leave one reference out at a time; within the other n - 1, min(3, n - 1) matches give full credit.
    needed = min(3, count - 1)
    total_matches = sum(1 for reference in references if reference == predicted)
    score = 0.0
    for reference in references:
        matches_among_others = total_matches - (1 if reference == predicted else 0)
        score += min(1.0, matches_among_others / needed)
    return score / count


# --------------------------------------------------------------------------- ANLS


def levenshtein_distance(first: str, second: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character, each costing 1)."""
    if len(first) < len(second):
        first, second = second, first
    previous = list(range(len(second) + 1))
    for row, first_char in enumerate(first, start=1):
        current = [row]
        for column, second_char in enumerate(second, start=1):
            current.append(min(previous[column] + 1,              # delete from first
                               current[column - 1] + 1,           # insert into first
                               previous[column - 1] + (first_char != second_char)))
        previous = current
    return previous[-1]


def _anls_text(text: str) -> str:
    """The official scorer's normalisation for the edit distance: stripped, lower case, single spaces."""
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: Answers, threshold: float = 0.5) -> float:
    """Normalised Levenshtein similarity to the closest reference; below `threshold` it counts as 0.

    As the official DocVQA/InfographicVQA script: distance between the normalised texts, divided by the
    longer of the two RAW texts' lengths (as upper-cased), so extra whitespace lowers the distance ratio."""
    predicted = _anls_text(prediction)
    ratios = []
    for answer in _answer_list(answers):
        # The lengths are the raw strings' on purpose: normalising them too gives a different score
        # whenever a text holds repeated or surrounding whitespace (or a character whose upper case is
        # longer, such as "ß").
        length = max(len(answer.upper()), len(prediction.upper()))
        ratios.append(0.0 if length == 0 else levenshtein_distance(_anls_text(answer), predicted) / length)
    similarity = 1.0 - min(ratios)
    return similarity if similarity >= threshold else 0.0


# --------------------------------------------------------------------------- relaxed accuracy


def _as_number(text: str) -> float | None:
    """A float for plain numbers and percentages ("12", "-3.5", "1e3", "45%" -> 0.45), else None."""
    percent = text.endswith("%")
    try:
        value = float(text[:-1] if percent else text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return value / 100.0 if percent else value


def relaxed_accuracy(prediction: str, target: str, tolerance: float = 0.05) -> bool:
    """ChartQA's relaxed correctness: numbers within `tolerance` relative to the target, else equal text."""
    predicted_text, target_text = str(prediction).strip(), str(target).strip()
    predicted_number, target_number = _as_number(predicted_text), _as_number(target_text)
    if predicted_number is not None and target_number is not None:
        if target_number == 0:
            return predicted_number == 0
        return abs(predicted_number - target_number) / abs(target_number) <= tolerance
    return predicted_text.lower() == target_text.lower()


# --------------------------------------------------------------------------- exact matches


def exact_match(prediction: str, answers: Answers) -> float:
    """1.0 when the prediction equals one of the references, ignoring case and surrounding spaces."""
    predicted = prediction.strip().lower()
    return 1.0 if any(predicted == answer.strip().lower() for answer in _answer_list(answers)) else 0.0


def gqa_accuracy(prediction: str, answers: Answers) -> float:
    """GQA accuracy: trailing periods dropped, lower case, then exact equality with the gold answer."""
    predicted = prediction.strip().rstrip(".").strip().lower()
    return 1.0 if any(predicted == answer.strip().lower() for answer in _answer_list(answers)) else 0.0


def _best_relaxed_accuracy(prediction: str, answers: Answers) -> float:
    return 1.0 if any(relaxed_accuracy(prediction, target) for target in _answer_list(answers)) else 0.0


# --------------------------------------------------------------------------- registry and aggregation

ItemMetric = Callable[[str, Answers], float]

METRICS: dict[str, ItemMetric] = {
    "vqa_accuracy": vqa_accuracy,
    "anls": anls,
    "relaxed_accuracy": _best_relaxed_accuracy,   # best over the targets when several are given
    "exact_match": exact_match,
    "gqa_accuracy": gqa_accuracy,
}


def mean_percent(values: Iterable[float | bool]) -> float:
    """The mean of per-item scores in [0, 1], as a percentage; an empty input is an error."""
    listed = [float(value) for value in values]
    if not listed:
        raise ValueError("no values to average")
    return 100.0 * sum(listed) / len(listed)


# =========================================================================== benchmark breadth
# Multiple choice (MMBench, ScienceQA, SEED, multi-image), POPE, MME and captioning. Per-item functions
# return plain values; aggregates return fractions in [0, 1] unless they say otherwise (MME keeps its own
# 0-200-per-subtask scale, captioning returns pycocoevalcap's raw values).

# --------------------------------------------------------------------------- multiple choice

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CIRCULAR_INDEX_STRIDE = 1_000_000      # official circular MMBench rows: index + k * 1e6 is rotation k

# "(B)" at the start, whatever follows; or "B" followed by '.', ')', ':' or ',' ("B.", "B) cat", "B: cat").
# A bare "A " is deliberately not a letter: "A cat sits on the mat" starts with an article.
_PARENTHESISED_LETTER = re.compile(r"^\(([A-Z])\)")
_PUNCTUATED_LETTER = re.compile(r"^([A-Z])[.):,]")


def _match_text(text: str) -> str:
    return " ".join(text.casefold().split())


def _option_pattern(option_text: str) -> re.Pattern[str] | None:
    """A pattern finding the option's text as whole words (for ASCII letters and digits at its ends)."""
    text = _match_text(option_text).rstrip(".").strip()
    if not text:
        return None
    # Word boundaries only where the option starts/ends with an ASCII letter or digit: "1" must not match
    # inside "10", while a Chinese option must still match inside a Chinese sentence (no spaces there).
    before = r"(?<![a-z0-9])" if text[0].isascii() and text[0].isalnum() else ""
    after = r"(?![a-z0-9])" if text[-1].isascii() and text[-1].isalnum() else ""
    return re.compile(before + re.escape(text) + after)


def extract_option_letter(reply: str, options: Mapping[str, str]) -> str | None:
    """The option letter a free-text reply chooses, or None when it chooses none (scored as wrong).

    `options` maps letters ("A", "B", ...) to option texts. In order:

    1. the whole reply (surrounding spaces removed) is one of the option letters: ``"B"``;
    2. the reply starts with a letter of the options in parentheses or followed by ``.`` ``)`` ``:``
       ``,``: ``"B."``, ``"(B) a dog"``, ``"B) dog"``, ``"B: dog"`` (upper case only; a bare ``"A "`` is
       an article, not a choice);
    3. the text of exactly one option appears in the reply (case-insensitive, whitespace collapsed, a
       trailing period of the option ignored, whole words where the option begins or ends with an ASCII
       letter or digit). When several options appear and all but one are contained in the longest of
       them ("cat" and "black cat" in "a black cat"), the longest wins; otherwise the reply is ambiguous;
    4. anything else (empty, ambiguous, unrelated text, a letter that is not an option): None.

    InternVL's scripts instead take any reply's first character when it is a letter of the options (so
    "A cat ..." chooses A) and fall back to the raw text; we keep its single-letter and option-text rules.
    """
    text = (reply or "").strip()
    if not text:
        return None
    if text in options:
        return text
    for pattern in (_PARENTHESISED_LETTER, _PUNCTUATED_LETTER):
        found = pattern.match(text)
        if found and found.group(1) in options:
            return found.group(1)
    haystack = _match_text(text)
    matched: list[tuple[str, str]] = []
    for letter, option_text in options.items():
        pattern = _option_pattern(str(option_text))
        if pattern is not None and pattern.search(haystack):
            matched.append((letter, _match_text(str(option_text)).rstrip(".").strip()))
    if not matched:
        return None
    if len(matched) == 1:
        return matched[0][0]
    longest_letter, longest_text = max(matched, key=lambda entry: len(entry[1]))
    if all(other in longest_text for letter, other in matched if letter != longest_letter):
        return longest_letter
    return None


def circular_group(index: int) -> int:
    """The question an MMBench row belongs to: rows ``i``, ``i + 1e6``, ``i + 2e6``, ... are its rotations."""
    return index % CIRCULAR_INDEX_STRIDE


def rotate_options(option_texts: Sequence[str], answer_position: int | None,
                   shift: int) -> tuple[list[str], int | None]:
    """Rotation `shift` of a question's options (CircularEval): option ``i`` takes the text of old option
    ``(i + shift) mod n``; returns the rotated texts and the new position of the answer (None stays None).

    ``rotate_options(["x", "y", "z"], 1, 1) == (["y", "z", "x"], 0)``.
    """
    count = len(option_texts)
    if count == 0:
        raise ValueError("no options to rotate")
    rotated = [option_texts[(position + shift) % count] for position in range(count)]
    new_answer = None if answer_position is None else (answer_position - shift) % count
    return rotated, new_answer


def all_correct_by_group(hits: Iterable[tuple[object, bool]]) -> dict[object, bool]:
    """CircularEval: a question (group) is correct only when every one of its rows is; groups keep the
    order in which they first appear."""
    groups: dict[object, bool] = {}
    for group, hit in hits:
        groups[group] = groups.get(group, True) and bool(hit)
    return groups


# --------------------------------------------------------------------------- POPE


def pope_answer(reply: str) -> str:
    """"yes" or "no" from a reply, as POPE's (and LLaVA's / InternVL's) ``eval_pope.py``: keep the text
    before the first period, drop commas, split on spaces; the words ``No``, ``no`` or ``not`` make it
    "no", anything else (including an empty or unrelated reply) is "yes"."""
    text = reply or ""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def binary_classification_stats(predicted_yes: Sequence[bool], label_yes: Sequence[bool]) -> dict[str, float]:
    """Confusion counts and the POPE metrics with "yes" as the positive class, as fractions in [0, 1].

    Keys: ``tp fp tn fn`` (counts), ``accuracy precision recall f1 yes_ratio`` (``yes_ratio``: share of
    "yes" predictions). Where a denominator is zero (no "yes" predicted, no "yes" label) the ratio is 0.0;
    the reference script divides by zero there.
    """
    if len(predicted_yes) != len(label_yes):
        raise ValueError(f"{len(predicted_yes)} predictions for {len(label_yes)} labels")
    if not label_yes:
        raise ValueError("no predictions to score")
    tp = sum(1 for p, y in zip(predicted_yes, label_yes) if p and y)
    fp = sum(1 for p, y in zip(predicted_yes, label_yes) if p and not y)
    tn = sum(1 for p, y in zip(predicted_yes, label_yes) if not p and not y)
    fn = sum(1 for p, y in zip(predicted_yes, label_yes) if not p and y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total = len(label_yes)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "accuracy": (tp + tn) / total, "precision": precision,
            "recall": recall, "f1": f1, "yes_ratio": (tp + fp) / total}


# --------------------------------------------------------------------------- MME

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_CJK = re.compile(r"[\u4e00-\u9fa5]")


def mme_answer(reply: str) -> str:
    """"yes", "no" or "other" from a reply, as InternVL's ``eval/mme`` (its ``post_processing``, then the
    MME ``calculation.py`` rule): newlines removed; 不是 -> No, 是 -> Yes, 否 -> No; lower case; true -> yes,
    false -> no; other Chinese characters removed; then exactly "yes"/"no", else "yes" if the first four
    characters contain "yes", else "no" if they contain "no" ("not sure" is "no"), else "other"."""
    text = (reply or "").replace("\n", "").replace("不是", "No").replace("是", "Yes").replace("否", "No")
    text = text.lower().replace("true", "yes").replace("false", "no")
    text = _CJK.sub("", text).strip()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_subtask_scores(results: Iterable[tuple[object, str, str]]) -> dict[str, float]:
    """MME scores of one subtask from ``(image, reference "yes"/"no", parsed answer)`` per question.

    ``acc``: percent of questions answered right ("other" is wrong); ``acc_plus``: percent of images whose
    questions (two per image in MME) are all right; ``score = acc + acc_plus`` (0-200), the number MME
    sums into its perception (10 subtasks, 0-2000) and cognition (4 subtasks, 0-800) totals.
    """
    per_image: dict[object, bool] = {}
    correct = total = 0
    for image, reference, answer in results:
        hit = str(reference).strip().lower() == answer
        correct += hit
        total += 1
        per_image[image] = per_image.get(image, True) and hit
    if not total:
        raise ValueError("no MME answers to score")
    acc = 100.0 * correct / total
    acc_plus = 100.0 * sum(per_image.values()) / len(per_image)
    return {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}


def mme_totals(subtask_scores: Mapping[str, float]) -> dict[str, float]:
    """Perception and cognition totals (sums of the subtasks' ``acc + acc_plus`` present) and their sum."""
    perception = sum(score for name, score in subtask_scores.items() if name in MME_PERCEPTION)
    cognition = sum(score for name, score in subtask_scores.items() if name in MME_COGNITION)
    return {"perception": perception, "cognition": cognition, "total": perception + cognition}


# --------------------------------------------------------------------------- captioning

CAPTION_INSTALL_HINT = "pip install pycocoevalcap (or pip install '.[caption]')"


def caption_scorer_problem() -> str | None:
    """Why the caption metrics cannot run here (pycocoevalcap missing, or no `java` for its PTB tokenizer
    and METEOR), or None when they can."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("pycocoevalcap") is None:
        return f"caption metrics need pycocoevalcap, which is not installed: {CAPTION_INSTALL_HINT}"
    if shutil.which("java") is None:
        return ("caption metrics need Java (pycocoevalcap's PTB tokenizer and METEOR run java), and no `java` "
                "is on PATH: install a Java runtime (e.g. apt-get install default-jre-headless)")
    return None


def caption_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """COCO caption metrics of `predictions` (id -> caption) against `references` (id -> captions).

    As pycocoevalcap's ``COCOEvalCap.evaluate`` (what InternVL's ``eval/caption`` runs), without SPICE:
    PTB-tokenise both sides (lower case, punctuation dropped), then BLEU-1..4, METEOR 1.5, ROUGE-L and
    CIDEr-D over the whole set (CIDEr's document frequencies come from these references, so the score is
    a corpus score). Returns pycocoevalcap's raw values (``BLEU-4`` in [0, 1], ``CIDEr`` usually 0-2).
    Raises `launcher.errors.UserError` when pycocoevalcap or Java is missing.
    """
    import contextlib
    import io

    from launcher.errors import UserError

    problem = caption_scorer_problem()
    if problem is not None:
        raise UserError(problem)
    if set(predictions) != set(references):
        raise ValueError("predictions and references cover different ids")
    if not predictions:
        raise ValueError("no captions to score")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    keys = sorted(predictions)
    try:
        tokenizer = PTBTokenizer()
        tokenized_references = tokenizer.tokenize(
            {key: [{"caption": str(caption)} for caption in references[key]] for key in keys})
        tokenized_predictions = tokenizer.tokenize({key: [{"caption": str(predictions[key])}] for key in keys})
        # The tokenizer drops an empty last line: an empty caption must still be scored (as nothing).
        for key in keys:
            tokenized_predictions.setdefault(key, [""])
            tokenized_references.setdefault(key, [""])
        scores: dict[str, float] = {}
        with contextlib.redirect_stdout(io.StringIO()):           # Bleu prints its length ratios
            bleu, _ = Bleu(4).compute_score(tokenized_references, tokenized_predictions)
            scores.update({f"BLEU-{n}": float(value) for n, value in enumerate(bleu, start=1)})
            scores["METEOR"] = float(Meteor().compute_score(tokenized_references, tokenized_predictions)[0])
            scores["ROUGE-L"] = float(Rouge().compute_score(tokenized_references, tokenized_predictions)[0])
            scores["CIDEr"] = float(Cider().compute_score(tokenized_references, tokenized_predictions)[0])
    except (OSError, ValueError, BrokenPipeError) as error:
        raise UserError(f"caption scoring failed in pycocoevalcap (it runs java and writes a temporary file "
                        f"beside its tokenizer): {type(error).__name__}: {error}") from None
    return scores
