"""VQA tasks: loading InternVL's JSONL, prompts per preset, data errors, scoring."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eval_scripts.base import DataError, Item, TaskInputs
from eval_scripts.registry import get_task
from eval_scripts.vqa import PRESETS, VQATask
from launcher.errors import UserError

pytestmark = pytest.mark.timeout(60)

SHORT = "Answer the question using a single word or phrase."
VIZWIZ = "When the provided information is insufficient, respond with 'Unanswerable'. " + SHORT


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((record if isinstance(record, str) else json.dumps(record)) + "\n"
                            for record in records), encoding="utf-8")
    return path


def record(question_id: Any = 1, image: str = "images/a.jpg", question: str = "What colour?",
           **extra: Any) -> dict[str, Any]:
    return {"question_id": question_id, "image": image, "question": question, **extra}


def generic(tmp_path: Path, records: list[Any], metric: str = "exact_match",
            **inputs: Any) -> tuple[VQATask, list[Item]]:
    data = write_jsonl(tmp_path / "data.jsonl", records)
    task = get_task("vqa")
    items = task.load(TaskInputs(data_root=tmp_path, image_root=tmp_path, data_file=data, metric=metric,
                                 **inputs))
    return task, items


# ----------------------------------------------------------------------------- presets and prompts

EXPECTED_PRESETS = {
    # name: (data file, metric, max_new_tokens, prompt suffix)
    "textvqa_val": ("data/textvqa/textvqa_val.jsonl", "vqa_accuracy", 10, SHORT),
    "vqav2_val": ("data/vqav2/vqav2_val.jsonl", "vqa_accuracy", 10, SHORT),
    "okvqa_val": ("data/okvqa/okvqa_val.jsonl", "vqa_accuracy", 10, SHORT),
    "vizwiz_val": ("data/vizwiz/vizwiz_val.jsonl", "vqa_accuracy", 10, VIZWIZ),
    "docvqa_val": ("data/docvqa/val.jsonl", "anls", 100, SHORT),
    "infovqa_val": ("data/infographicsvqa/val.jsonl", "anls", 100, SHORT),
    "chartqa_test_human": ("data/chartqa/test_human.jsonl", "relaxed_accuracy", 100, SHORT),
    "chartqa_test_augmented": ("data/chartqa/test_augmented.jsonl", "relaxed_accuracy", 100, SHORT),
    "ai2diagram_test": ("data/ai2diagram/test_vlmevalkit.jsonl", "exact_match", 10, ""),
    "gqa_testdev": ("data/gqa/llava_gqa_testdev_balanced_qwen_format.jsonl", "gqa_accuracy", 10, SHORT),
}


def test_every_preset_is_registered_with_internvl_settings() -> None:
    assert {preset.name for preset in PRESETS} == set(EXPECTED_PRESETS)
    for name, (data, metric, max_new_tokens, _) in EXPECTED_PRESETS.items():
        task = get_task(name)
        assert (task.name, task.files["data"], task.metric, task.max_new_tokens) == (
            name, data, metric, max_new_tokens)


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_golden_prompt_per_preset(name: str) -> None:
    suffix = EXPECTED_PRESETS[name][3]
    item = Item(id="1", question="What is written on the sign?")
    expected = "What is written on the sign?" + (" " + suffix if suffix else "")
    assert get_task(name).prompt(item) == expected


def test_vizwiz_golden_prompt_text() -> None:
    item = Item(id="1", question="What is this?")
    assert get_task("vizwiz_val").prompt(item) == (
        "What is this? When the provided information is insufficient, respond with 'Unanswerable'. "
        "Answer the question using a single word or phrase.")


def test_ai2d_prompt_is_the_question_alone() -> None:
    question = "Which stage is shown?\nA. egg\nB. larva\nAnswer with the option's letter."
    assert get_task("ai2diagram_test").prompt(Item(id="1", question=question)) == question


def test_vqa_accuracy_presets_declare_annotation_files() -> None:
    assert get_task("textvqa_val").files["annotation"] == "data/textvqa/textvqa_val_annotations.json"
    assert get_task("vqav2_val").files["annotation"] == "data/vqav2/v2_mscoco_val2014_annotations.json"
    assert get_task("okvqa_val").files["annotation"] == "data/okvqa/mscoco_val2014_annotations.json"
    assert get_task("vizwiz_val").files["annotation"] == "data/vizwiz/vizwiz_val_annotations.json"


# ----------------------------------------------------------------------------- loading

def test_generic_task_loads_items_in_file_order(tmp_path: Path) -> None:
    task, items = generic(tmp_path, [record(7, "images/a.jpg", "Q one?", answer="x", category="ocr"),
                                     "",                        # blank lines are ignored
                                     record("q-2", "b.png", "Q two?", answer=["y", "z"])])
    assert [item.id for item in items] == ["7", "q-2"]
    assert items[0].images == (tmp_path / "images" / "a.jpg",)
    assert items[0].answer == "x" and items[1].answer == ["y", "z"]
    assert items[0].question == "Q one?"
    assert task.prompt(items[0]) == "Q one? " + SHORT


def test_prediction_row_keeps_question_id_and_extra_keys(tmp_path: Path) -> None:
    task, items = generic(tmp_path, [record(7, answer="x", category="ocr", ocr_tokens=["a", "b"])])
    row = task.prediction_row(items[0], "x")
    assert row["id"] == "7" and row["question_id"] == 7
    assert row["prediction"] == "x" and row["answer"] == "x" and row["metric"] == "exact_match"
    assert row["category"] == "ocr" and "ocr_tokens" not in row      # only scalar extras
    json.dumps(row)


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.jsonl:2: not valid JSON"):
        generic(tmp_path, [record(1), '{"question_id": 2, "image": "a.jpg",'])


def test_line_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.jsonl:1: expected a JSON object"):
        generic(tmp_path, ["[1, 2]"])


@pytest.mark.parametrize("field", ["question_id", "image", "question"])
def test_missing_field_names_file_line_and_field(tmp_path: Path, field: str) -> None:
    broken = record(2)
    del broken[field]
    with pytest.raises(DataError, match=rf"data\.jsonl:2: missing field\(s\) {field}"):
        generic(tmp_path, [record(1), broken])


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"duplicate question_id '5' \(first on line 1, again on line 3\)"):
        generic(tmp_path, [record(5), record(6), record("5")])


@pytest.mark.parametrize("question", ["", "   ", None])
def test_empty_question_is_refused(tmp_path: Path, question: Any) -> None:
    with pytest.raises(DataError, match=r"data\.jsonl:1: item '1': empty question"):
        generic(tmp_path, [record(1, question=question)])


@pytest.mark.parametrize("image", ["../secret.jpg", "images/../../secret.jpg", "/etc/passwd"])
def test_image_path_escaping_the_root_names_item_and_path(tmp_path: Path, image: str) -> None:
    root = tmp_path / "root"
    data = write_jsonl(root / "data.jsonl", [record(3, image=image)])
    inputs = TaskInputs(data_root=root, image_root=root, data_file=data, metric="anls")
    with pytest.raises(DataError, match=rf"item '3': image path '{image}' resolves to .*outside the image root"):
        get_task("vqa").load(inputs)


def test_allow_outside_root_accepts_escaping_paths(tmp_path: Path) -> None:
    root = tmp_path / "root"
    data = write_jsonl(root / "data.jsonl", [record(3, image="../shared/x.jpg")])
    inputs = TaskInputs(data_root=root, image_root=root, data_file=data, metric="anls",
                        allow_outside_root=True)
    assert get_task("vqa").load(inputs)[0].images == (tmp_path / "shared" / "x.jpg",)


def test_images_are_not_opened_at_load(tmp_path: Path) -> None:
    _, items = generic(tmp_path, [record(1, image="does/not/exist.jpg")])
    assert items[0].images == (tmp_path / "does" / "not" / "exist.jpg",)


def test_generic_task_requires_data_and_metric(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pass --data FILE"):
        get_task("vqa").load(TaskInputs(data_root=tmp_path, image_root=tmp_path, metric="anls"))
    data = write_jsonl(tmp_path / "d.jsonl", [record(1)])
    with pytest.raises(UserError, match="needs --metric NAME"):
        get_task("vqa").load(TaskInputs(data_root=tmp_path, image_root=tmp_path, data_file=data))


def test_unknown_metric_lists_known_ones_with_a_close_match(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown metric 'vqa_acc'\. Did you mean 'vqa_accuracy'\? "
                                        r"Known metrics: anls, exact_match"):
        generic(tmp_path, [record(1)], metric="vqa_acc")


def test_missing_preset_file_names_path_and_flags(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data file not found for task 'chartqa_test_human': tried .*"
                                         r"chartqa/test_human\.jsonl.*--data-root"):
        get_task("chartqa_test_human").load(TaskInputs(data_root=tmp_path, image_root=tmp_path))


# ----------------------------------------------------------------------------- answers from annotations

def textvqa_layout(root: Path, answers_in_jsonl: Any, annotations: dict[int, list[str]] | None) -> TaskInputs:
    write_jsonl(root / "data/textvqa/textvqa_val.jsonl",
                [record(qid, f"data/textvqa/train_images/{qid}.jpg", answer=answers_in_jsonl)
                 for qid in (11, 12)])
    if annotations is not None:
        document = {"annotations": [{"question_id": qid, "answers": [{"answer": a, "answer_id": i}
                                                                     for i, a in enumerate(answers)]}
                                    for qid, answers in annotations.items()]}
        (root / "data/textvqa/textvqa_val_annotations.json").write_text(json.dumps(document))
    return TaskInputs(data_root=root, image_root=root)


def test_vqa_accuracy_preset_takes_the_ten_answers_from_the_annotation_file(tmp_path: Path) -> None:
    annotations = {11: ["cat"] * 3 + ["dog"] * 7, 12: ["two"] * 10}
    items = get_task("textvqa_val").load(textvqa_layout(tmp_path, "majority", annotations))
    assert [item.answer for item in items] == [annotations[11], annotations[12]]
    assert items[0].images == (tmp_path / "data/textvqa/train_images/11.jpg",)


def test_question_missing_from_the_annotation_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"textvqa_val\.jsonl:2: question_id '12' is not in the annotation"):
        get_task("textvqa_val").load(textvqa_layout(tmp_path, "x", {11: ["cat"] * 10}))


def test_vqa_accuracy_preset_refuses_single_answers_without_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"single answer and the annotation file is missing \(tried .*"
                                         r"textvqa_val_annotations\.json"):
        get_task("textvqa_val").load(textvqa_layout(tmp_path, "majority", None))


def test_vqa_accuracy_preset_uses_answer_lists_in_the_jsonl_when_no_annotation_file(tmp_path: Path) -> None:
    items = get_task("textvqa_val").load(textvqa_layout(tmp_path, ["a"] * 10, None))
    assert items[0].answer == ["a"] * 10


def test_docvqa_annotation_format(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data/docvqa/val.jsonl", [record(49153, "data/docvqa/val/documents/x.png")])
    (tmp_path / "data/docvqa/val").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data/docvqa/val/val_v1.0.json").write_text(
        json.dumps({"data": [{"questionId": 49153, "answers": ["0.28", "0,28"]}]}))
    items = get_task("docvqa_val").load(TaskInputs(data_root=tmp_path, image_root=tmp_path))
    assert items[0].answer == ["0.28", "0,28"]


def test_gqa_annotation_format(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data/gqa/llava_gqa_testdev_balanced_qwen_format.jsonl",
                [record("20968379", "data/gqa/images/n1.jpg")])
    (tmp_path / "data/gqa/testdev_balanced_questions.json").write_text(
        json.dumps({"20968379": {"answer": "left", "isBalanced": True}}))
    items = get_task("gqa_testdev").load(TaskInputs(data_root=tmp_path, image_root=tmp_path))
    assert items[0].answer == "left"


def test_preset_refuses_items_without_answers(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data/chartqa/test_human.jsonl", [record(1, answer="3"), record(2)])
    with pytest.raises(DataError, match=r"test_human\.jsonl:2: item '2' has no 'answer'"):
        get_task("chartqa_test_human").load(TaskInputs(data_root=tmp_path, image_root=tmp_path))


# ----------------------------------------------------------------------------- scoring

def test_scoring_a_small_row_set_by_hand(tmp_path: Path) -> None:
    task = get_task("textvqa_val")
    rows = [
        {"id": "1", "prediction": "cat", "answer": ["cat"] * 3 + ["dog"] * 7},   # 0.9
        {"id": "2", "prediction": "Two", "answer": ["2"] * 10},                  # 1.0
        {"id": "3", "prediction": "cat", "answer": ["cat"] * 2 + ["dog"] * 8},   # 0.6
        {"id": "4", "skipped": True, "answer": ["dog"] * 10},                    # 0, skipped
    ]
    score = task.score(rows)
    assert score.metric == "vqa_accuracy" and score.scale == "percent"
    assert score.score == pytest.approx(100 * (0.9 + 1.0 + 0.6 + 0.0) / 4)
    assert score.metrics == {"vqa_accuracy": score.score}
    assert (score.n, score.n_skipped) == (4, 1)


def test_anls_and_relaxed_scoring_by_hand() -> None:
    anls_score = get_task("docvqa_val").score([{"id": "1", "prediction": "1995", "answer": ["1996"]},
                                               {"id": "2", "prediction": "abc", "answer": ["xyz"]}])
    assert anls_score.score == pytest.approx(37.5)
    relaxed = get_task("chartqa_test_human").score([{"id": "1", "prediction": "100", "answer": "105.2"},
                                                    {"id": "2", "prediction": "105.2", "answer": "100"}])
    assert relaxed.score == pytest.approx(50.0)


def test_generic_task_rescored_from_rows_alone_uses_the_recorded_metric(tmp_path: Path) -> None:
    task, items = generic(tmp_path, [record(1, answer="1996")], metric="anls")
    rows = [task.prediction_row(items[0], "1995")]
    fresh = get_task("vqa")                   # as `python -m launcher score` would build it
    assert fresh.score(rows).metric == "anls"
    assert fresh.score(rows).score == pytest.approx(75.0)
    fresh.select_metric("exact_match")        # an explicit --metric wins
    assert fresh.score(rows).score == 0.0


def test_assigning_the_metric_as_the_rescore_command_does_wins_over_the_rows(tmp_path: Path) -> None:
    task, items = generic(tmp_path, [record(1, answer="1996")], metric="anls")
    rows = [task.prediction_row(items[0], "1995")]
    fresh = get_task("vqa")
    fresh.metric = "exact_match"
    assert (fresh.score(rows).metric, fresh.score(rows).score) == ("exact_match", 0.0)
    with pytest.raises(UserError, match="unknown metric 'anl'"):
        fresh.metric = "anl"


def test_skipped_row_with_a_reason_scores_zero_and_is_counted() -> None:
    rows = [{"id": "1", "prediction": "yes", "answer": "yes"},
            {"id": "2", "prediction": "", "answer": "yes", "skipped": "cannot read image x.jpg"}]
    score = get_task("gqa_testdev").score(rows)
    assert (score.score, score.n, score.n_skipped) == (50.0, 2, 1)


def test_row_without_reference_cannot_be_scored() -> None:
    with pytest.raises(DataError, match="row '9' has no reference answer"):
        get_task("docvqa_val").score([{"id": "9", "prediction": "x"}])


def test_generic_task_without_any_metric_cannot_score() -> None:
    with pytest.raises(UserError, match="needs --metric"):
        get_task("vqa").score([{"id": "1", "prediction": "x", "answer": "x"}])
