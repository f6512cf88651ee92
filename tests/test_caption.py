"""Captioning: InternVL's caption files, the COCO caption metrics on a hand-computed example, rescoring.

The metric tests need pycocoevalcap and Java (``pip install pycocoevalcap``); without them they skip, and
the test of the error message runs instead. METEOR starts a JVM (about 8 s), so each scoring call is slow:
the example is scored once per module.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pytest

from eval_scripts.base import DataError, TaskInputs
from eval_scripts.metrics import caption_scorer_problem, caption_scores
from eval_scripts.registry import describe_tasks, get_task
from launcher.errors import UserError
from launcher.rescore import rescore

pytestmark = pytest.mark.timeout(120)
PROBLEM = caption_scorer_problem()
needs_scorer = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")
PROMPT = "Provide a one-sentence caption for the provided image."

# Image 1: the caption is a 3-word prefix of the 5-word reference; image 2: the caption equals its reference
# (after PTB tokenisation: lower case, punctuation dropped). No n-gram is shared between the two images.
PREDICTIONS = {"1": "a man riding", "2": "Two dogs play in the snow."}
REFERENCES = {"1": ["A man riding a horse."], "2": ["two dogs play in the snow"]}


def expected_scores() -> dict[str, float]:
    """The example's metrics by hand, from the metrics' published definitions."""
    # BLEU (corpus): every n-gram of the candidates matches, so BLEU-n is the brevity penalty,
    # exp(1 - reference length / candidate length) = exp(1 - 11/9).
    bleu = math.exp(1 - 11 / 9)
    # ROUGE-L (mean per image), F with beta 1.2 over the longest common subsequence:
    # image 1: LCS 3, precision 3/3, recall 3/5; image 2: 1.
    precision, recall, beta2 = 1.0, 0.6, 1.2 ** 2
    rouge_1 = (1 + beta2) * precision * recall / (recall + beta2 * precision)
    # CIDEr-D: every reference n-gram has document frequency 1 of 2 images, so all idf weights are equal and
    # cancel in the cosines. Image 1, n = 1..4: 4/sqrt(21), 2/(sqrt2*2), 1/sqrt3, 0 (no 4-gram), times the
    # length penalty exp(-(2 - 4)^2 / (2 * 6^2)) (lengths counted in bigrams); image 2: 1 for every n.
    penalty = math.exp(-((2 - 4) ** 2) / (2 * 6 ** 2))
    cider_1 = 10 * penalty * (4 / math.sqrt(21) + 1 / math.sqrt(2) + 1 / math.sqrt(3) + 0) / 4
    return {"BLEU-1": bleu, "BLEU-2": bleu, "BLEU-3": bleu, "BLEU-4": bleu,
            "ROUGE-L": (rouge_1 + 1.0) / 2, "CIDEr": (cider_1 + 10.0) / 2}


@pytest.fixture(scope="module")
def example_scores() -> dict[str, float]:
    if PROBLEM is not None:
        pytest.skip(PROBLEM)
    return caption_scores(PREDICTIONS, REFERENCES)


@needs_scorer
@pytest.mark.parametrize("name", ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"])
def test_caption_metric_matches_the_hand_computed_value(example_scores: dict, name: str) -> None:
    assert example_scores[name] == pytest.approx(expected_scores()[name], rel=1e-6)


@needs_scorer
def test_meteor_is_meteor_1_5s_value_for_the_example(example_scores: dict) -> None:
    # METEOR 1.5 (stemming, synonyms and paraphrase tables) is not worked out by hand; this is the value
    # the official jar returns for this example, kept as a regression check.
    assert example_scores["METEOR"] == pytest.approx(0.52026376, abs=1e-6)


def test_without_the_scorer_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "pycocoevalcap" else real_find_spec(name, *args))
    with pytest.raises(UserError, match=r"pip install pycocoevalcap"):
        caption_scores({"1": "a"}, {"1": ["a"]})
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match=r"need Java.*no `java` is on PATH"):
        caption_scores({"1": "a"}, {"1": ["a"]})


# ----------------------------------------------------------------------------- InternVL's caption files

def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def coco_layout(root: Path) -> None:
    """coco_karpathy_test.json (BLIP's list) and coco_karpathy_test_gt.json (COCO format) under data/coco."""
    write_json(root / "data/coco/annotations/coco_karpathy_test.json", [
        {"image": "val2014/COCO_val2014_000000000001.jpg", "caption": ["ignored: gt file wins"]},
        {"image": "val2014/COCO_val2014_000000000002.jpg", "caption": ["ignored"]}])
    write_json(root / "data/coco/annotations/coco_karpathy_test_gt.json", {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [{"image_id": 1, "id": 10, "caption": REFERENCES["1"][0]},
                        {"image_id": 2, "id": 11, "caption": REFERENCES["2"][0]}]})


def test_coco_karpathy_reads_image_ids_from_file_names_and_references_from_the_gt_file(tmp_path: Path) -> None:
    coco_layout(tmp_path)
    task = get_task("coco_karpathy_test")
    items = task.load(TaskInputs(tmp_path, tmp_path))
    assert [item.id for item in items] == ["1", "2"]
    assert items[0].images == (tmp_path / "data/coco/val2014/COCO_val2014_000000000001.jpg",)
    assert items[0].answer == REFERENCES["1"]
    assert task.prompt(items[0]) == PROMPT and task.max_new_tokens == 30


def test_karpathy_list_without_gt_file_uses_its_own_captions(tmp_path: Path) -> None:
    data = write_json(tmp_path / "list.json", [{"image": "x/COCO_val2014_000000000007.jpg", "caption": ["a", "b"]}])
    items = get_task("coco_karpathy_test").load(TaskInputs(tmp_path, tmp_path, data_file=data))
    assert items[0].id == "7" and items[0].answer == ["a", "b"]


def test_flickr_and_nocaps_read_coco_format_files(tmp_path: Path) -> None:
    document = {"images": [{"id": 5, "file_name": "5.jpg"}, {"id": 6, "image": "6.jpg"}],
                "annotations": [{"image_id": 5, "caption": "one"}, {"image_id": 5, "caption": "two"},
                                {"image_id": 6, "caption": "three"}]}
    write_json(tmp_path / "data/flickr30k/flickr30k_test_karpathy.json", document)
    write_json(tmp_path / "data/nocaps/nocaps_val_4500_captions.json", document)
    flickr = get_task("flickr30k_test").load(TaskInputs(tmp_path, tmp_path))
    assert [(item.id, item.answer) for item in flickr] == [("5", ["one", "two"]), ("6", ["three"])]
    assert flickr[1].images == (tmp_path / "data/flickr30k/6.jpg",)
    nocaps = get_task("nocaps_val").load(TaskInputs(tmp_path, tmp_path))
    assert nocaps[0].images == (tmp_path / "data/nocaps/images/5.jpg",)


def test_an_image_without_references_is_refused(tmp_path: Path) -> None:
    data = write_json(tmp_path / "c.json", {"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": []})
    with pytest.raises(DataError, match="has no reference captions"):
        get_task("flickr30k_test").load(TaskInputs(tmp_path, tmp_path, data_file=data))


# ----------------------------------------------------------------------------- scoring and rescoring

@needs_scorer
def test_task_score_is_the_metrics_x100_and_rescoring_reproduces_it(tmp_path: Path) -> None:
    coco_layout(tmp_path)
    task = get_task("coco_karpathy_test")
    items = task.load(TaskInputs(tmp_path, tmp_path))
    rows = [json.loads(json.dumps(task.prediction_row(item, PREDICTIONS[item.id]))) for item in items]
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    rescored = rescore("coco_karpathy_test", predictions)         # from predictions.jsonl alone
    expected = expected_scores()
    assert rescored["metric"] == "CIDEr" and rescored["scale"] == "CIDEr x100"
    assert rescored["score"] == pytest.approx(100 * expected["CIDEr"], rel=1e-6)
    assert rescored["metrics"]["BLEU-4"] == pytest.approx(100 * expected["BLEU-4"], rel=1e-6)
    assert rescored["metrics"]["average_length"] == pytest.approx((3 + 6) / 2)
    assert rescored["n"] == 2


def test_list_tasks_rows_for_captioning() -> None:
    lines = {line.split()[0]: line for line in describe_tasks().splitlines()[1:]}
    assert "CIDEr" in lines["coco_karpathy_test"]
    assert "data=data/coco/annotations/coco_karpathy_test.json" in lines["coco_karpathy_test"]
    assert "data=data/nocaps/nocaps_val_4500_captions.json" in lines["nocaps_val"]


def rows_with(answer: Sequence[str]) -> list[dict]:
    return [{"id": "1", "prediction": "x", "answer": list(answer)}]


def test_rows_without_references_cannot_be_scored() -> None:
    with pytest.raises(DataError, match="no reference captions"):
        get_task("flickr30k_test").score(rows_with([]))
