"""The per-item metrics against the official definitions and worked examples."""
from __future__ import annotations

import pytest

from eval_scripts.metrics import (METRICS, anls, exact_match, gqa_accuracy, levenshtein_distance,
                                  mean_percent, normalize_vqa_answer, relaxed_accuracy, vqa_accuracy)

pytestmark = pytest.mark.timeout(30)


# ----------------------------------------------------------------------------- VQA accuracy

def test_three_of_ten_annotators_agreeing_scores_point_nine() -> None:
    # Leaving out one of the 3 matching answers leaves 2 matches (2/3), 3 times; leaving out one of
    # the 7 others leaves 3 matches (1.0), 7 times: (3 * 2/3 + 7) / 10 = 0.9.
    answers = ["cat"] * 3 + ["dog"] * 7
    assert vqa_accuracy("cat", answers) == pytest.approx(0.9)


def test_two_of_ten_annotators_agreeing_scores_point_six() -> None:
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    answers = ["cat"] * 2 + ["dog"] * 8
    assert vqa_accuracy("cat", answers) == pytest.approx(0.6)


@pytest.mark.parametrize("agreeing, expected", [(0, 0.0), (1, 0.3), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_by_number_of_agreeing_annotators(agreeing: int, expected: float) -> None:
    answers = ["cat"] * agreeing + ["dog"] * (10 - agreeing)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


@pytest.mark.parametrize("prediction, reference", [
    ("The dog", "dog"),                 # articles dropped
    ("an apple", "apple"),
    ("two", "2"),                       # number words to digits
    ("Ten", "10"),
    ("none", "0"),
    ("yes.", "yes"),                    # trailing period
    ("yes!", "yes"),
    ("Yes", "yes"),                     # case
    ("dont", "don't"),                  # contractions restored
    ("couldnt've", "couldn't've"),
    ("red, white", "red white"),        # commas dropped
    ("black-white", "black white"),     # a mark inside a word becomes a space
    ("1,000", "1000"),
    ("what?", "what"),
])
def test_vqa_normalisation_makes_equivalent_answers_equal(prediction: str, reference: str) -> None:
    assert normalize_vqa_answer(prediction) == normalize_vqa_answer(reference)
    assert vqa_accuracy(prediction, [reference] * 10) == 1.0


def test_decimal_point_is_kept() -> None:
    assert normalize_vqa_answer("3.5") == "3.5"
    assert vqa_accuracy("35", ["3.5"] * 10) == 0.0


def test_real_words_resembling_contractions_are_kept() -> None:
    assert normalize_vqa_answer("its") == "its"
    assert normalize_vqa_answer("were") == "were"


def test_unanimous_references_are_normalised_too() -> None:
    # The official vqaEval skips reference normalisation when all answers agree (it would score 0 here);
    # we normalise both sides always, as InternVL's TextVQA evaluator does.
    assert vqa_accuracy("yes", ["Yes."] * 10) == 1.0


def test_vqa_accuracy_with_one_reference_is_normalised_exact_match() -> None:
    assert vqa_accuracy("Two", "2") == 1.0
    assert vqa_accuracy("three", ["2"]) == 0.0


def test_vqa_accuracy_with_few_references_gives_full_credit_when_unanimous() -> None:
    assert vqa_accuracy("cat", ["cat", "cat"]) == 1.0
    assert vqa_accuracy("cat", ["cat", "dog"]) == pytest.approx(0.5)
    assert vqa_accuracy("cat", ["cat", "cat", "dog"]) == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_vqa_accuracy_with_more_than_ten_references_keeps_threshold_three() -> None:
    answers = ["cat"] * 3 + ["dog"] * 9
    assert vqa_accuracy("cat", answers) == pytest.approx((3 * 2 / 3 + 9) / 12)


def test_vqa_accuracy_without_references_is_an_error() -> None:
    with pytest.raises(ValueError, match="no reference"):
        vqa_accuracy("cat", [])


# ----------------------------------------------------------------------------- ANLS

def test_anls_one_wrong_digit_of_four() -> None:
    assert anls("1995", ["1996"]) == pytest.approx(0.75)


def test_anls_takes_the_closest_reference_and_ignores_case_and_spaces() -> None:
    assert anls("  New   YORK ", ["boston", "new york"]) == 1.0


def test_anls_below_threshold_scores_zero() -> None:
    assert anls("abc", ["xyz"]) == 0.0                      # similarity 0
    assert anls("abcd", ["abxy"]) == pytest.approx(0.5)     # exactly 0.5 is kept
    assert anls("abcde", ["abxyz"]) == 0.0                  # 0.4 < 0.5
    assert anls("abcde", ["abxyz"], threshold=0.3) == pytest.approx(0.4)


def test_anls_of_two_empty_texts_is_one() -> None:
    assert anls("", [""]) == 1.0


def test_anls_divides_by_the_raw_length_so_repeated_spaces_count() -> None:
    # The official script takes the distance between normalised texts ("new yrok" vs "new york": 2) but
    # divides by the raw prediction's length (9 with the double space), not the normalised one (8).
    assert anls("new  yrok", ["new york"]) == pytest.approx(1 - 2 / 9)
    assert anls("new yrok", ["new york"]) == pytest.approx(1 - 2 / 8)


# (prediction, references, score) as InternVL's infographicsvqa_eval.py (the RRC DocVQA/InfographicVQA
# scorer) gives them, each checked by running that script on these cases.
OFFICIAL_ANLS_CASES = [
    ("new  yrok", ["new york"], 7 / 9),
    ("  New   York  ", ["new york"], 1.0),
    ("1995", ["1996"], 0.75),
    ("abcd", ["abxy"], 0.5),
    ("ab  cd", ["abxd"], 4 / 6),
    ("ab   xy", ["abcd"], 4 / 7),              # 0.4 on normalised lengths: would be zeroed
    ("new yrok", ["new   york"], 0.8),         # the reference's raw length counts too
    ("new  york", ["boston", "new yrok"], 7 / 9),
    ("straße", ["STRASSE"], 5 / 7),            # lengths of the upper-cased raw strings ("SS" for "ß")
    ("", ["abc"], 0.0),
    ("", [""], 1.0),
    ("new\tyork\n", ["New York"], 1.0),
    ("abcde", ["abxyz"], 0.0),
    ("abcde  ", ["abxyz"], 4 / 7),             # trailing spaces lift it over the threshold
    ("the  total is 12", ["12", "total 12"], 0.5625),
    ("  ", [""], 1.0),
    ("x", ["  "], 0.5),
]


@pytest.mark.parametrize("prediction, references, official", OFFICIAL_ANLS_CASES)
def test_anls_equals_the_official_docvqa_script(prediction: str, references: list[str], official: float) -> None:
    assert anls(prediction, references) == pytest.approx(official, abs=1e-12)


@pytest.mark.parametrize("first, second, distance", [
    ("kitten", "sitting", 3), ("", "abc", 3), ("abc", "abc", 0), ("flaw", "lawn", 2)])
def test_levenshtein_distance(first: str, second: str, distance: int) -> None:
    assert levenshtein_distance(first, second) == distance
    assert levenshtein_distance(second, first) == distance


# ----------------------------------------------------------------------------- relaxed accuracy

def test_relaxed_accuracy_is_relative_to_the_target() -> None:
    assert relaxed_accuracy("105.2", "100") is False       # 5.2% of the target
    assert relaxed_accuracy("100", "105.2") is True        # 4.94% of the target
    assert relaxed_accuracy("105", "100") is True          # exactly 5%


def test_relaxed_accuracy_percent_means_hundredths() -> None:
    assert relaxed_accuracy("50%", "0.5") is True
    assert relaxed_accuracy("0.51", "50%") is True
    assert relaxed_accuracy("50", "50%") is False


def test_relaxed_accuracy_non_numeric_is_case_insensitive_equality() -> None:
    assert relaxed_accuracy(" Yes ", "yes") is True
    assert relaxed_accuracy("Blue", "green") is False
    assert relaxed_accuracy("1,000", "1000") is False      # not a number for the metric: text differs


def test_relaxed_accuracy_zero_target_needs_zero() -> None:
    assert relaxed_accuracy("0.0", "0") is True
    assert relaxed_accuracy("0.01", "0") is False


def test_relaxed_accuracy_registry_entry_takes_the_best_target() -> None:
    assert METRICS["relaxed_accuracy"]("100", ["7", "104"]) == 1.0
    assert METRICS["relaxed_accuracy"]("100", "7") == 0.0


# ----------------------------------------------------------------------------- exact matches

def test_exact_match_ignores_case_and_surrounding_spaces_only() -> None:
    assert exact_match(" B ", ["b"]) == 1.0
    assert exact_match("B.", ["b"]) == 0.0
    assert exact_match("c", ["a", "C"]) == 1.0


def test_gqa_accuracy_drops_trailing_periods_and_case() -> None:
    assert gqa_accuracy("Yes.", "yes") == 1.0
    assert gqa_accuracy("left", "right") == 0.0
    assert gqa_accuracy("the table", "table") == 0.0      # no article stripping in GQA


# ----------------------------------------------------------------------------- registry

def test_metric_registry_names() -> None:
    assert set(METRICS) == {"vqa_accuracy", "anls", "relaxed_accuracy", "exact_match", "gqa_accuracy"}
    for metric in METRICS.values():
        assert metric("x", ["x"]) == 1.0


def test_mean_percent() -> None:
    assert mean_percent([1.0, 0.0, True, 0.5]) == pytest.approx(62.5)
    with pytest.raises(ValueError):
        mean_percent([])
