"""Multiple-choice tasks: option extraction, CircularEval, MMBench / ScienceQA / SEED / multi-image loading,
prompts, scoring, the predictions TSV and rescoring from predictions.jsonl alone."""
from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import pytest
from PIL import Image

from eval_scripts.base import DataError, ImageBytes, Item, TaskInputs
from eval_scripts.metrics import (all_correct_by_group, circular_group, extract_option_letter,
                                  rotate_options)
from eval_scripts.registry import describe_tasks, get_task
from launcher.errors import UserError
from launcher.rescore import main as rescore_main
from launcher.rescore import rescore

pytestmark = pytest.mark.timeout(60)

EN = "Answer with the option's letter from the given choices directly."
CN = "请直接回答选项字母。"
OPTIONS = {"A": "cat", "B": "black cat", "C": "dog", "D": "1"}


# ----------------------------------------------------------------------------- option extraction

@pytest.mark.parametrize("reply, expected", [
    ("B", "B"),                                  # a single letter
    ("  C  ", "C"),
    ("B.", "B"),                                 # a leading letter with punctuation
    ("B. black cat", "B"),
    ("(C)", "C"),
    ("(C) dog", "C"),
    ("D) 1", "D"),
    ("A: cat", "A"),
    ("The answer is dog", "C"),                  # the text of exactly one option
    ("It is a DOG.", "C"),                       # case-insensitive
    ("a black cat", "B"),                        # "cat" is inside "black cat": the longer option wins
    ("I see 1 animal", "D"),
    ("10 animals", None),                        # "1" only as a whole word
    ("a cat and a dog", None),                   # two options named: ambiguous
    ("E.", None),                                # not an option letter
    ("b", None),                                 # lower case is not a letter choice
    ("A horse", None),                           # "A " is an article, not a choice; no option text
    ("", None),
    ("I don't know", None),
])
def test_option_letter_extraction_table(reply: str, expected: str | None) -> None:
    assert extract_option_letter(reply, OPTIONS) == expected


def test_option_text_matching_works_inside_chinese_text() -> None:
    assert extract_option_letter("答案是猫。", {"A": "狗", "B": "猫"}) == "B"


# ----------------------------------------------------------------------------- circular evaluation

def test_circular_group_is_index_modulo_one_million() -> None:
    assert [circular_group(i) for i in (17, 1_000_017, 3_000_017, 999_999)] == [17, 17, 17, 999_999]


@pytest.mark.parametrize("shift, expected", [
    (0, (["x", "y", "z", "w"], 1)),
    (1, (["y", "z", "w", "x"], 0)),
    (2, (["z", "w", "x", "y"], 3)),
    (3, (["w", "x", "y", "z"], 2)),
])
def test_rotation_moves_texts_and_the_answer(shift: int, expected: tuple) -> None:
    rotated, answer = rotate_options(["x", "y", "z", "w"], 1, shift)
    assert (rotated, answer) == expected
    assert rotated[answer] == "y"                # the answer's text stays the answer


def test_a_group_is_correct_only_if_all_its_rows_are() -> None:
    hits = [(1, True), (1, True), (2, True), (2, False), (3, True)]
    assert all_correct_by_group(hits) == {1: True, 2: False, 3: True}


# ----------------------------------------------------------------------------- MMBench files

def png_base64(color: tuple[int, int, int] = (200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image", "source"]


def mmbench_row(index: int, question: str, options: Sequence[str], answer: str | None, category: str = "ocr",
                l2: str = "perception", hint: str = "", image: str | None = None) -> dict[str, Any]:
    row = {"index": index, "question": question, "hint": hint, "answer": answer or "", "category": category,
           "l2-category": l2, "image": image if image is not None else png_base64(), "source": "unit"}
    for letter, text in zip("ABCD", list(options) + ["", "", "", ""]):
        row[letter] = text
    return row


def write_tsv(path: Path, rows: Sequence[dict[str, Any]], header: Sequence[str] = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(column, "") for column in header])
    return path


def inputs_for(root: Path, data: Path | None = None, **extra: Any) -> TaskInputs:
    return TaskInputs(data_root=root, image_root=root, data_file=data, **extra)


def rows_for(task, items: Sequence[Item], replies: dict[str, str] | str) -> list[dict[str, Any]]:
    """Prediction rows as the runner writes them (through the task's own prediction_row)."""
    rows = []
    for item in items:
        reply = replies if isinstance(replies, str) else replies[item.id]
        rows.append(json.loads(json.dumps(task.prediction_row(item, reply))))    # through JSON, as on disk
    return rows


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_mmbench_prompt_is_internvls_english_prompt(tmp_path: Path) -> None:
    write_tsv(tmp_path / "data/mmbench/mmbench_dev_en_20231003.tsv", [
        mmbench_row(1, "What is shown?", ["a cat", "a dog", "a cow"], "B", hint="Look closely."),
        mmbench_row(2, "Which colour?", ["red", "blue"], "A")])
    task = get_task("mmbench_dev_en")
    items = task.load(inputs_for(tmp_path))                 # the preset's file under --data-root
    assert [item.id for item in items] == ["1", "2"]
    assert task.prompt(items[0]) == f"Look closely.\nWhat is shown?\nA. a cat\nB. a dog\nC. a cow\n{EN}"
    assert task.prompt(items[1]) == f"Which colour?\nA. red\nB. blue\n{EN}"
    assert isinstance(items[0].images[0], ImageBytes)
    assert Image.open(io.BytesIO(items[0].images[0].data)).size == (8, 8)
    assert items[0].answer == "B" and items[0].fields["options"] == {"A": "a cat", "B": "a dog", "C": "a cow"}
    assert task.max_new_tokens == 100


def test_mmbench_chinese_prompt(tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "cn.tsv", [mmbench_row(5, "图中是什么?", ["猫", "狗"], "A")])
    task = get_task("mmbench_dev_cn")
    items = task.load(inputs_for(tmp_path, data))            # --data overrides the preset's file
    assert task.prompt(items[0]) == f"图中是什么?\nA. 猫\nB. 狗\n{CN}"


def test_official_circular_rows_are_scored_per_question(tmp_path: Path) -> None:
    # Question 7 (answer "cat") in 4 rotations, question 8 (answer "red") in 2; rotation k has index i + k*1e6.
    rows = [mmbench_row(7, "Animal?", ["cat", "dog", "cow", "pig"], "A", category="animals", l2="perception"),
            mmbench_row(1_000_007, "Animal?", ["dog", "cow", "pig", "cat"], "D", category="animals", l2="perception"),
            mmbench_row(2_000_007, "Animal?", ["cow", "pig", "cat", "dog"], "C", category="animals", l2="perception"),
            mmbench_row(3_000_007, "Animal?", ["pig", "cat", "dog", "cow"], "B", category="animals", l2="perception"),
            mmbench_row(8, "Colour?", ["red", "blue"], "A", category="colours", l2="perception"),
            mmbench_row(1_000_008, "Colour?", ["blue", "red"], "B", category="colours", l2="perception")]
    data = write_tsv(tmp_path / "circular.tsv", rows)
    task = get_task("mmbench_dev_en")
    items = task.load(inputs_for(tmp_path, data))
    assert [item.fields["circular_group"] for item in items] == [7, 7, 7, 7, 8, 8]
    # A model that names "cat" every time gets question 7 in every rotation; it always answers "A" on 8,
    # right once out of two rotations: question 8 fails CircularEval.
    replies = {"7": "cat", "1000007": "D", "2000007": "(C) cat", "3000007": "B.", "8": "A", "1000008": "A"}
    score = task.score(rows_for(task, items, replies))
    assert score.metric == "circular_accuracy" and score.scale == "percent"
    assert score.score == pytest.approx(50.0)                   # 1 of 2 questions
    assert score.metrics["accuracy"] == pytest.approx(100 * 5 / 6)   # 5 of 6 rows
    assert score.metrics["circular"] is True and score.metrics["n_questions"] == 2
    assert score.metrics["category/animals"] == 100.0 and score.metrics["category/colours"] == 0.0
    assert score.metrics["l2_category/perception"] == 50.0
    assert score.n == 6 and score.metrics["n_scored"] == 6


def test_a_plain_file_scores_plain_accuracy(tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "plain.tsv", [mmbench_row(1, "Q1", ["x", "y"], "A"),
                                               mmbench_row(2, "Q2", ["x", "y"], "B"),
                                               mmbench_row(3, "Q3", ["x", "y"], "B")])
    task = get_task("mmbench_dev_en")
    score = task.score(rows_for(task, task.load(inputs_for(tmp_path, data)), {"1": "A", "2": "A", "3": "y"}))
    assert score.score == pytest.approx(100 * 2 / 3) and score.metrics["accuracy"] == score.score
    assert score.metrics["circular"] is False


def test_generated_rotations_make_one_item_per_option_with_its_own_id(tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "plain.tsv", [mmbench_row(4, "Animal?", ["cat", "dog", "cow"], "B"),
                                               mmbench_row(9, "Yes?", ["yes", "no"], "A")])
    task = get_task("mmbench_dev_en_circular")
    items = task.load(inputs_for(tmp_path, data))
    assert [item.id for item in items] == ["4", "4@r1", "4@r2", "9", "9@r1"]
    assert [item.fields["options"] for item in items[:3]] == [
        {"A": "cat", "B": "dog", "C": "cow"}, {"A": "dog", "B": "cow", "C": "cat"},
        {"A": "cow", "B": "cat", "C": "dog"}]
    assert [item.answer for item in items] == ["B", "A", "C", "A", "B"]
    assert [item.fields["index"] for item in items] == [4, 1_000_004, 2_000_004, 9, 1_000_009]
    assert {item.fields["circular_group"] for item in items[:3]} == {4}
    assert task.prompt(items[1]) == f"Animal?\nA. dog\nB. cow\nC. cat\n{EN}"
    # Always saying "dog" is right in every rotation; always saying "A" is right in only one.
    by_text = task.score(rows_for(task, items, {i.id: ("dog" if i.fields["circular_group"] == 4 else "yes")
                                                 for i in items}))
    assert by_text.score == 100.0
    always_a = task.score(rows_for(task, items, "A"))
    assert always_a.score == 0.0 and always_a.metrics["accuracy"] == pytest.approx(100 * 2 / 5)


def test_generating_rotations_refuses_a_file_that_has_them(tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "circular.tsv", [mmbench_row(1, "Q", ["x", "y"], "A"),
                                                  mmbench_row(1_000_001, "Q", ["y", "x"], "B")])
    with pytest.raises(DataError, match=r"already holds circular copies.*'mmbench_dev_en'"):
        get_task("mmbench_dev_en_circular").load(inputs_for(tmp_path, data))


def test_test_split_is_unscored_and_writes_the_submission_tsv(tmp_path: Path) -> None:
    header = [column for column in HEADER if column != "answer"]
    data = write_tsv(tmp_path / "test.tsv", [mmbench_row(11, "Q one", ["cat", "dog"], None),
                                              mmbench_row(12, "Q two", ["red", "blue", "green"], None)], header)
    task = get_task("mmbench_test_en")
    items = task.load(inputs_for(tmp_path, data))
    assert [item.answer for item in items] == [None, None]
    rows = rows_for(task, items, {"11": "It is a dog", "12": "no idea"})
    score = task.score(rows)
    assert score.scale == "unscored" and score.metrics["n_scored"] == 0 and score.n == 2
    assert score.metrics["predictions_tsv"] == "predictions.tsv"
    assert task.extra_outputs(rows) == {"predictions.tsv": (
        "index\tquestion\tA\tB\tC\tprediction\n"
        "11\tQ one\tcat\tdog\t\tB\n"
        "12\tQ two\tred\tblue\tgreen\tno idea\n")}


def test_dev_tsv_of_predictions_keeps_the_answer_column(tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "dev.tsv", [mmbench_row(3, "Q", ["x", "y"], "B")])
    task = get_task("mmbench_dev_en")
    rows = rows_for(task, task.load(inputs_for(tmp_path, data)), "(B)")
    assert task.extra_outputs(rows)["predictions.tsv"] == (
        "index\tquestion\tA\tB\tanswer\tprediction\n3\tQ\tx\ty\tB\tB\n")


def test_image_cells_may_refer_to_another_rows_image(tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "ref.tsv", [mmbench_row(1, "Q", ["x", "y"], "A"),
                                             mmbench_row(1_000_001, "Q", ["y", "x"], "B", image="1")])
    items = get_task("mmbench_dev_en").load(inputs_for(tmp_path, data))
    assert items[1].images[0] is items[0].images[0]


@pytest.mark.parametrize("row, message", [
    (mmbench_row(1, "Q", ["x", "y"], "C"), "answer 'C' is not one of the options A, B"),
    (mmbench_row(1, "Q", ["x"], "A"), "fewer than two options"),
    (mmbench_row(1, "", ["x", "y"], "A"), "empty question"),
    ({**mmbench_row(1, "Q", ["x", "y"], "A"), "index": "one"}, "'index' must be a non-negative integer"),
    (mmbench_row(1, "Q", ["x", "y"], "A", image="@@not base64@@"), "image is not base64"),
    (mmbench_row(1, "Q", ["x", "y"], "A", image="77"), "refers to row index 77, which holds no image"),
])
def test_bad_mmbench_rows_name_file_and_line(tmp_path: Path, row: dict, message: str) -> None:
    data = write_tsv(tmp_path / "bad.tsv", [mmbench_row(0, "fine", ["x", "y"], "A"), row])
    with pytest.raises(DataError) as error:
        get_task("mmbench_dev_en").load(inputs_for(tmp_path, data))
    assert f"{data}:3" in str(error.value) and message in str(error.value)


def test_duplicate_index_and_missing_columns_are_refused(tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "dup.tsv", [mmbench_row(1, "Q", ["x", "y"], "A"), mmbench_row(1, "Q", ["x", "y"], "A")])
    with pytest.raises(DataError, match="duplicate index 1"):
        get_task("mmbench_dev_en").load(inputs_for(tmp_path, data))
    no_image = write_tsv(tmp_path / "noimage.tsv", [mmbench_row(1, "Q", ["x", "y"], "A")],
                         [column for column in HEADER if column != "image"])
    with pytest.raises(DataError, match="missing column"):
        get_task("mmbench_dev_en").load(inputs_for(tmp_path, no_image))


def test_a_missing_preset_file_names_the_data_root_flag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data/mmbench/mmbench_dev_en_20231003\.tsv .*; pass --data-root DIR"):
        get_task("mmbench_dev_en").load(inputs_for(tmp_path))


def test_metric_override_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="fixed metric"):
        get_task("mmbench_dev_en").load(TaskInputs(Path("."), Path("."), metric="anls"))
    predictions = write_jsonl(tmp_path / "predictions.jsonl", [{"id": "1", "prediction": "A"}])
    with pytest.raises(UserError, match="fixed metric"):
        rescore("pope", predictions, metric="anls")            # python -m launcher score --metric anls
    assert rescore_main(["--task", "mme", "--predictions", str(predictions), "--metric", "acc"]) == 2


# ----------------------------------------------------------------------------- ScienceQA

def sqa_record(**extra: Any) -> dict[str, Any]:
    return {"image": "data/scienceqa/images/test/1/image.png", "question": "Which is a mammal?",
            "choices": ["shark", "whale", "trout"], "answer": 1, "hint": "", **extra}


def test_scienceqa_prompt_answer_and_ids(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data/scienceqa/scienceqa_test_img.jsonl", [
        sqa_record(), sqa_record(hint="Context: animals.", subject="natural science")])
    task = get_task("scienceqa_test")
    items = task.load(inputs_for(tmp_path))
    assert [item.id for item in items] == ["0", "1"]           # no question_id: the position in the file
    assert task.prompt(items[0]) == f"Which is a mammal?\nA. shark\nB. whale\nC. trout\n{EN}"
    assert task.prompt(items[1]) == f"Context: animals.\nWhich is a mammal?\nA. shark\nB. whale\nC. trout\n{EN}"
    assert items[0].answer == "B"
    assert items[0].images == (tmp_path / "data/scienceqa/images/test/1/image.png",)
    score = task.score(rows_for(task, items, {"0": "B", "1": "The whale."}))
    assert score.score == 100.0 and score.metrics["category/natural science"] == 100.0


def test_scienceqa_refuses_images_outside_the_root(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "sqa.jsonl", [sqa_record(image="../../etc/passwd")])
    with pytest.raises(DataError, match="outside the image root"):
        get_task("scienceqa_test").load(inputs_for(tmp_path, data))
    items = get_task("scienceqa_test").load(inputs_for(tmp_path, data, allow_outside_root=True))
    assert len(items) == 1


# ----------------------------------------------------------------------------- SEED-Bench

SEED_TEXT = "How many towels are there?\nA. One\nB. Two\nC. Three\nD. Four\n" + EN


def test_seed_sends_the_text_as_is_and_reads_categories_from_the_annotation(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data/SEED/seed.jsonl", [
        {"question_id": "101", "image": "SEED-Bench-image/a.jpg", "text": SEED_TEXT, "answer": "B"},
        {"question_id": "102", "image": "SEED-Bench-image/b.jpg", "text": SEED_TEXT, "answer": "C"}])
    (tmp_path / "data/SEED/SEED-Bench.json").write_text(json.dumps({
        "question_type": {"Instances Counting": 5, "Scene Understanding": 1},
        "questions": [{"question_id": "101", "question_type_id": 5}, {"question_id": "102", "question_type_id": 1}]}))
    task = get_task("seed_image")
    items = task.load(inputs_for(tmp_path))
    assert task.prompt(items[0]) == SEED_TEXT
    assert items[0].fields["options"] == {"A": "One", "B": "Two", "C": "Three", "D": "Four"}
    assert items[0].images == (tmp_path / "data/SEED/SEED-Bench-image/a.jpg",)
    score = task.score(rows_for(task, items, {"101": "Two", "102": "B"}))
    assert score.score == 50.0
    assert score.metrics["category/Instances Counting"] == 100.0
    assert score.metrics["category/Scene Understanding"] == 0.0


# ----------------------------------------------------------------------------- multi-image

def test_multi_image_items_carry_every_image_and_lettered_options(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "mi.jsonl", [
        {"question_id": "m1", "images": ["imgs/a.png", "imgs/b.png"],
         "question": "<image> <image> Which image shows a cat?", "options": ["(A) the first", "(B) the second"],
         "answer": "B", "category": "compare"},
        {"id": 2, "images": ["imgs/c.png"], "question": "Colour?", "options": {"A": "red", "B": "blue"},
         "answer": "blue"}])
    task = get_task("multi_image_mc")
    items = task.load(inputs_for(tmp_path, data))
    assert items[0].images == (tmp_path / "imgs/a.png", tmp_path / "imgs/b.png")
    assert task.prompt(items[0]) == f"Image-1 Image-2 Which image shows a cat?\nA. the first\nB. the second\n{EN}"
    assert [item.answer for item in items] == ["B", "B"]
    assert task.max_new_tokens == 50
    score = task.score(rows_for(task, items, {"m1": "(B)", "2": "red"}))
    assert score.score == 50.0 and score.metrics["category/compare"] == 100.0


def test_multi_image_task_needs_data_flag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="declares no data file; pass --data FILE"):
        get_task("multi_image_mc").load(inputs_for(tmp_path))


@pytest.mark.parametrize("record, message", [
    ({"question_id": 1, "images": [], "question": "Q", "options": ["x", "y"], "answer": "A"}, "non-empty list"),
    ({"question_id": 1, "images": ["a.png"], "question": "Q", "options": ["x"], "answer": "A"}, "at least two"),
    ({"question_id": 1, "images": ["a.png"], "question": "Q", "options": ["x", "y"], "answer": "Z"}, "neither"),
    ({"question_id": 1, "images": ["a.png"], "question": "Q"}, "missing field(s) options"),
])
def test_bad_multi_image_lines_name_file_and_line(tmp_path: Path, record: dict, message: str) -> None:
    data = write_jsonl(tmp_path / "mi.jsonl", [record])
    with pytest.raises(DataError) as error:
        get_task("multi_image_mc").load(inputs_for(tmp_path, data))
    assert f"{data}:1" in str(error.value) and message in str(error.value)


# ----------------------------------------------------------------------------- rescoring and listing

def test_skipped_rows_count_as_wrong(tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "plain.tsv", [mmbench_row(1, "Q1", ["x", "y"], "A"),
                                               mmbench_row(2, "Q2", ["x", "y"], "B")])
    task = get_task("mmbench_dev_en")
    rows = rows_for(task, task.load(inputs_for(tmp_path, data)), "A")
    rows[0]["skipped"] = "cannot read image"
    score = task.score(rows)
    assert score.score == 0.0 and score.n_skipped == 1 and score.n == 2


@pytest.mark.parametrize("task_name", ["mmbench_dev_en_circular", "scienceqa_test", "seed_image", "multi_image_mc"])
def test_rescoring_predictions_jsonl_alone_gives_the_same_metrics(task_name: str, tmp_path: Path) -> None:
    if task_name == "mmbench_dev_en_circular":
        data = write_tsv(tmp_path / "d.tsv", [mmbench_row(1, "Q", ["x", "y", "z"], "C", category="c1")])
    elif task_name == "scienceqa_test":
        data = write_jsonl(tmp_path / "d.jsonl", [sqa_record(subject="s")])
    elif task_name == "seed_image":
        data = write_jsonl(tmp_path / "d.jsonl", [{"question_id": 1, "image": "a.jpg", "text": SEED_TEXT,
                                                    "answer": "D", "category": "counting"}])
    else:
        data = write_jsonl(tmp_path / "d.jsonl", [{"question_id": 1, "images": ["a.png", "b.png"], "question": "Q",
                                                    "options": ["x", "y"], "answer": "B"}])
    task = get_task(task_name)
    items = task.load(inputs_for(tmp_path, data))
    rows = rows_for(task, items, {item.id: reply for item, reply in zip(items, ["z", "B", "(A)", "Four"])})
    predictions = write_jsonl(tmp_path / "out" / "predictions.jsonl", rows)
    expected = task.score(rows).to_json(task_name)
    assert rescore(task_name, predictions) == expected
    assert rescore_main(["--task", task_name, "--predictions", str(predictions)]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == expected


def test_list_tasks_shows_files_and_metrics_of_the_new_tasks() -> None:
    table = describe_tasks()
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert "circular_accuracy" in lines["mmbench_dev_en"]
    assert "data=data/mmbench/mmbench_dev_en_20231003.tsv" in lines["mmbench_dev_en"]
    assert "data=data/scienceqa/scienceqa_test_img.jsonl" in lines["scienceqa_test"]
    assert "data=data/SEED/seed.jsonl" in lines["seed_image"] and "accuracy" in lines["seed_image"]
    assert "--data FILE" in lines["multi_image_mc"]


def test_image_root_stands_in_for_the_data_root_in_image_paths(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data/SEED/seed.jsonl", [{"question_id": 1, "image": "SEED-Bench-image/a.jpg",
                                                      "text": SEED_TEXT, "answer": "A"}])
    images = tmp_path / "elsewhere"
    items = get_task("seed_image").load(TaskInputs(data_root=tmp_path, image_root=images))
    assert items[0].images == (images / "data/SEED/SEED-Bench-image/a.jpg",)
