"""POPE and MME: answer parsing, the metrics on hand-computed cases, InternVL's file layouts, rescoring."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pytest

from eval_scripts.base import DataError, Item, TaskInputs
from eval_scripts.metrics import (binary_classification_stats, mme_answer, mme_subtask_scores, mme_totals,
                                  pope_answer)
from eval_scripts.registry import describe_tasks, get_task
from launcher.rescore import rescore

pytestmark = pytest.mark.timeout(60)
SHORT = "Answer the question using a single word or phrase."


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def rows_for(task, items: Sequence[Item], replies: dict[str, str]) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(task.prediction_row(item, replies[item.id]))) for item in items]


def inputs_for(root: Path, data: Path | None = None) -> TaskInputs:
    return TaskInputs(data_root=root, image_root=root, data_file=data)


# ----------------------------------------------------------------------------- POPE metrics

@pytest.mark.parametrize("reply, expected", [
    ("Yes", "yes"), ("yes, there is a dog.", "yes"), ("No", "no"), ("no", "no"),
    ("No, there is not.", "no"), ("There is not a dog in the image", "no"),
    ("Yes. No dogs were harmed.", "yes"),           # only the first sentence counts
    ("Nope", "yes"), ("", "yes"), ("I cannot tell", "yes"),   # anything without no/No/not is "yes"
])
def test_pope_answer_table(reply: str, expected: str) -> None:
    assert pope_answer(reply) == expected


def test_pope_stats_on_a_hand_computed_confusion_matrix() -> None:
    # TP 3, FP 1, TN 4, FN 2 (10 questions).
    predicted = [True, True, True, True, False, False, False, False, False, False]
    labels = [True, True, True, False, False, False, False, False, True, True]
    stats = binary_classification_stats(predicted, labels)
    assert (stats["tp"], stats["fp"], stats["tn"], stats["fn"]) == (3, 1, 4, 2)
    assert stats["accuracy"] == pytest.approx(0.7)
    assert stats["precision"] == pytest.approx(0.75)
    assert stats["recall"] == pytest.approx(0.6)
    assert stats["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)     # 0.6667
    assert stats["yes_ratio"] == pytest.approx(0.4)


def test_pope_stats_with_no_yes_predictions_are_zero_not_an_error() -> None:
    stats = binary_classification_stats([False, False], [True, False])
    assert (stats["precision"], stats["recall"], stats["f1"], stats["accuracy"]) == (0.0, 0.0, 0.0, 0.5)


# ----------------------------------------------------------------------------- POPE task

def pope_layout(root: Path, labels: dict[str, list[str]]) -> list[dict[str, Any]]:
    """llava_pope_test.jsonl and coco/coco_pope_<category>.json for the given labels per category."""
    questions = []
    question_id = 0
    for category, category_labels in labels.items():
        label_lines = []
        for position, label in enumerate(category_labels):
            question_id += 1
            image = f"COCO_val2014_{question_id:012d}.jpg"
            text = f"Is there a thing {position} in the image?"
            questions.append({"question_id": question_id, "image": image, "text": f"{text}\n{SHORT}",
                              "category": category})
            label_lines.append({"question_id": position + 1, "image": image, "text": text, "label": label})
        write_jsonl(root / f"data/pope/coco/coco_pope_{category}.json", label_lines)
    write_jsonl(root / "data/pope/llava_pope_test.jsonl", questions)
    return questions


def test_pope_pairs_labels_by_position_and_scores_per_category(tmp_path: Path) -> None:
    pope_layout(tmp_path, {"adversarial": ["yes", "no", "yes", "no"], "random": ["yes", "no"]})
    task = get_task("pope")
    items = task.load(inputs_for(tmp_path))
    assert [item.answer for item in items] == ["yes", "no", "yes", "no", "yes", "no"]
    assert task.prompt(items[0]) == f"Is there a thing 0 in the image?\n{SHORT}"
    assert items[0].images == (tmp_path / "data/pope/val2014/COCO_val2014_000000000001.jpg",)
    # adversarial: says yes to all -> TP 2, FP 2: precision 0.5, recall 1, F1 2/3, accuracy 0.5, yes-ratio 1
    # random: right twice -> F1 1, accuracy 1
    replies = {"1": "Yes", "2": "Yes", "3": "Yes.", "4": "yes", "5": "Yes", "6": "No, there is not."}
    score = task.score(rows_for(task, items, replies))
    assert score.metric == "f1" and score.scale == "percent"
    assert score.metrics["adversarial/f1"] == pytest.approx(100 * 2 / 3)
    assert score.metrics["adversarial/precision"] == pytest.approx(50.0)
    assert score.metrics["adversarial/yes_ratio"] == pytest.approx(100.0)
    assert score.metrics["random/f1"] == pytest.approx(100.0)
    assert score.score == pytest.approx((100 * 2 / 3 + 100) / 2)        # mean F1 over categories
    assert score.metrics["accuracy"] == pytest.approx((50 + 100) / 2)


def test_pope_inline_labels_need_no_label_files(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pope.jsonl", [
        {"question_id": "a", "image": "x.jpg", "text": "Is there a cat?", "category": "popular", "label": "no"}])
    task = get_task("pope")
    items = task.load(inputs_for(tmp_path, data))
    assert items[0].answer == "no"
    assert task.prompt(items[0]) == f"Is there a cat?\n{SHORT}"        # the instruction is added when missing


def test_pope_refuses_label_files_out_of_order_or_of_another_length(tmp_path: Path) -> None:
    pope_layout(tmp_path, {"popular": ["yes", "no"]})
    label_file = tmp_path / "data/pope/coco/coco_pope_popular.json"
    lines = label_file.read_text().splitlines()
    label_file.write_text("\n".join(reversed(lines)) + "\n")
    with pytest.raises(DataError, match="not in the same order"):
        get_task("pope").load(inputs_for(tmp_path))
    label_file.write_text(lines[0] + "\n")
    with pytest.raises(DataError, match="holds 1 labels but .* has 2 'popular' questions"):
        get_task("pope").load(inputs_for(tmp_path))
    label_file.unlink()
    with pytest.raises(DataError, match="no label file"):
        get_task("pope").load(inputs_for(tmp_path))


@pytest.mark.parametrize("n_labels, direction", [(3, "more"), (1, "fewer")])
def test_a_label_file_of_another_length_names_both_files_counts_and_the_file_to_use(
        tmp_path: Path, n_labels: int, direction: str) -> None:
    pope_layout(tmp_path, {"adversarial": ["yes", "no"], "random": ["yes", "no"]})
    label_file = tmp_path / "data/pope/coco/coco_pope_random.json"
    write_jsonl(label_file, [{"question_id": k + 1, "image": f"COCO_val2014_{k + 3:012d}.jpg", "label": "yes"}
                             for k in range(n_labels)])
    with pytest.raises(DataError) as raised:
        get_task("pope").load(inputs_for(tmp_path))
    message = str(raised.value)
    assert (f"POPE label file {label_file} holds {n_labels} labels but the question file "
            f"{tmp_path / 'data/pope/llava_pope_test.jsonl'} has 2 'random' questions ({direction} labels than "
            f"questions)") in message
    # What to do: the label file of the POPE revision that LLaVA's question file was made from.
    assert ("replace coco_pope_random.json with https://github.com/AoiDragon/POPE/raw/"
            "e3e39262c85a6a83f26cf5094022a782cb0df58d/output/coco/coco_pope_random.json") in message


# ----------------------------------------------------------------------------- MME metrics

@pytest.mark.parametrize("reply, expected", [
    ("Yes", "yes"), ("No", "no"), ("yes.", "yes"), ("No, it is not.", "no"), ("Not sure", "no"),
    ("True", "yes"), ("false", "no"), ("是", "yes"), ("不是", "no"), ("否", "no"),
    ("The answer is yes", "other"),          # only the first four characters are looked at
    ("maybe", "other"), ("", "other"),
])
def test_mme_answer_table(reply: str, expected: str) -> None:
    assert mme_answer(reply) == expected


def test_mme_acc_and_acc_plus_on_a_constructed_subtask() -> None:
    # Image 1: both right; image 2: one right; image 3: both wrong (one "other").
    results = [("1.jpg", "Yes", "yes"), ("1.jpg", "No", "no"),
               ("2.jpg", "Yes", "yes"), ("2.jpg", "No", "yes"),
               ("3.jpg", "Yes", "no"), ("3.jpg", "No", "other")]
    scores = mme_subtask_scores(results)
    assert scores["acc"] == pytest.approx(50.0)                # 3 of 6 questions
    assert scores["acc_plus"] == pytest.approx(100 / 3)        # 1 of 3 images
    assert scores["score"] == pytest.approx(50 + 100 / 3)


def test_mme_totals_sum_perception_and_cognition_subtasks() -> None:
    totals = mme_totals({"existence": 190.0, "OCR": 140.0, "code_reasoning": 100.0, "my_subtask": 50.0})
    assert totals == {"perception": 330.0, "cognition": 100.0, "total": 430.0}


# ----------------------------------------------------------------------------- MME task

def mme_layout(root: Path, subtasks: dict[str, list[tuple[str, str, str]]], nested: Sequence[str] = ()) -> None:
    lists = root / "eval/mme/Your_Results"
    lists.mkdir(parents=True, exist_ok=True)
    for subtask, lines in subtasks.items():
        (lists / f"{subtask}.txt").write_text("".join(f"{img}\t{q}\t{a}\n" for img, q, a in lines), encoding="utf-8")
        folder = root / "data/mme/MME_Benchmark_release_version" / subtask
        if subtask in nested:
            folder = folder / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for img, _, _ in lines:
            (folder / img).write_bytes(b"")


EXISTENCE = [("a.jpg", "Is there a dog? Please answer yes or no.", "Yes"),
             ("a.jpg", "Is there a cat? Please answer yes or no.", "No"),
             ("b.jpg", "Is there a car? Please answer yes or no.", "Yes"),
             ("b.jpg", "Is there a bus? Please answer yes or no.", "No")]
CODE = [("0001.png", "Is the output 'Hello'? Please answer yes or no.", "Yes"),
        ("0001.png", "Is the output 'World'? Please answer yes or no.", "No")]


def test_mme_reads_internvls_layout_with_its_prompt(tmp_path: Path) -> None:
    mme_layout(tmp_path, {"existence": EXISTENCE, "artwork": EXISTENCE[:2], "code_reasoning": CODE},
               nested=("artwork",))
    task = get_task("mme")
    items = task.load(inputs_for(tmp_path))
    assert [item.id for item in items][:4] == ["existence/a.jpg/q0", "existence/a.jpg/q1", "existence/b.jpg/q0",
                                               "existence/b.jpg/q1"]
    assert [item.fields["subtask"] for item in items] == ["existence"] * 4 + ["artwork"] * 2 + ["code_reasoning"] * 2
    assert task.prompt(items[0]) == f"Is there a dog? Please answer yes or no. {SHORT}"
    release = tmp_path / "data/mme/MME_Benchmark_release_version"
    assert items[0].images == (release / "existence/a.jpg",)
    assert items[4].images == (release / "artwork/images/a.jpg",)   # MME's own release nests some images
    assert task.max_new_tokens == 20


def test_mme_scores_subtasks_and_totals(tmp_path: Path) -> None:
    mme_layout(tmp_path, {"existence": EXISTENCE, "code_reasoning": CODE})
    task = get_task("mme")
    items = task.load(inputs_for(tmp_path))
    replies = {"existence/a.jpg/q0": "Yes", "existence/a.jpg/q1": "No",      # image a: both right
               "existence/b.jpg/q0": "Yes", "existence/b.jpg/q1": "Yes",     # image b: one right
               "code_reasoning/0001.png/q0": "No", "code_reasoning/0001.png/q1": "No"}
    score = task.score(rows_for(task, items, replies))
    assert score.metrics["existence/acc"] == pytest.approx(75.0)
    assert score.metrics["existence/acc_plus"] == pytest.approx(50.0)
    assert score.metrics["existence/score"] == pytest.approx(125.0)
    assert score.metrics["code_reasoning/score"] == pytest.approx(50.0 + 0.0)
    assert score.metrics["perception"] == pytest.approx(125.0)
    assert score.metrics["cognition"] == pytest.approx(50.0)
    assert score.metric == "mme_total" and score.score == pytest.approx(175.0) and score.scale == "MME total"


def test_mme_data_flag_takes_one_question_list(tmp_path: Path) -> None:
    mme_layout(tmp_path, {"existence": EXISTENCE, "count": EXISTENCE})
    only = tmp_path / "eval/mme/Your_Results/count.txt"
    items = get_task("mme").load(inputs_for(tmp_path, only))
    assert {item.fields["subtask"] for item in items} == {"count"} and len(items) == 4


def test_mme_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    mme_layout(tmp_path, {"existence": EXISTENCE})
    path = tmp_path / "eval/mme/Your_Results/existence.txt"
    path.write_text(path.read_text() + "c.jpg\tIs it?\tMaybe\n")
    with pytest.raises(DataError, match=f"{path}:5: the answer must be Yes or No"):
        get_task("mme").load(inputs_for(tmp_path))
    path.write_text("c.jpg only two\tfields\n")
    with pytest.raises(DataError, match=f"{path}:1: expected 3 tab-separated fields"):
        get_task("mme").load(inputs_for(tmp_path))


def test_mme_missing_folder_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"eval/mme/Your_Results .*; pass --data-root DIR"):
        get_task("mme").load(inputs_for(tmp_path))


# ----------------------------------------------------------------------------- rescoring and listing

def test_pope_and_mme_rescore_from_predictions_jsonl_alone(tmp_path: Path) -> None:
    pope_layout(tmp_path, {"adversarial": ["yes", "no"], "popular": ["no", "yes"]})
    mme_layout(tmp_path, {"existence": EXISTENCE})
    for name, replies in (("pope", ["Yes", "No", "yes", "no"]), ("mme", ["Yes", "No", "No", "No"])):
        task = get_task(name)
        items = task.load(inputs_for(tmp_path))
        rows = rows_for(task, items, dict(zip([item.id for item in items], replies)))
        predictions = write_jsonl(tmp_path / name / "predictions.jsonl", rows)
        assert rescore(name, predictions) == task.score(rows).to_json(name)


def test_list_tasks_rows_for_pope_and_mme() -> None:
    lines = {line.split()[0]: line for line in describe_tasks().splitlines()[1:]}
    assert "f1" in lines["pope"] and "data=data/pope/llava_pope_test.jsonl" in lines["pope"]
    assert "mme_total" in lines["mme"] and "data=eval/mme/Your_Results" in lines["mme"]
