"""The breadth tasks end to end: a tiny random InternVL under torchrun (2 processes, gloo on the CPU) on data
made here in each benchmark's own format and layout.

The model is random, so the tests assert completeness (every item exactly once, in dataset order), the
output formats, and that the metrics written by the run equal a rescoring of the written predictions.jsonl
alone; never accuracy. One run is shared per family (the multiple-choice, POPE and MME tasks run together in
one launch, as a user would run them: the model loads once).
"""
from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import pytest
from PIL import Image

from eval_scripts.base import TaskInputs
from eval_scripts.metrics import caption_scorer_problem
from eval_scripts.registry import get_task
from launcher.rescore import rescore
from tests.runs import explain, launch, metrics, predictions, torchrun

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SINGLE_IMAGE_TASKS = ("mmbench_dev_en", "mmbench_dev_cn_circular", "mmbench_test_en", "scienceqa_test",
                      "seed_image", "pope", "mme")
COMMON = ("--batch-size", "4", "--max-new-tokens", "3", "--num-workers", "0")


def picture(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def png_base64(size: tuple[int, int], color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def make_single_image_data(root: Path) -> None:
    """InternVL's layout under `root` for MMBench (circular, plain, test), ScienceQA, SEED, POPE and MME."""
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    red, blue = png_base64((40, 30), (220, 30, 30)), png_base64((30, 40), (30, 30, 220))
    write_tsv(root / "data/mmbench/mmbench_dev_en_20231003.tsv", header, [      # official circular rows
        [1, "what colour is it ?", "look .", "red", "blue", "green", "", "A", "colour", "perception", red],
        [1_000_001, "what colour is it ?", "look .", "blue", "green", "red", "", "C", "colour", "perception", "1"],
        [2_000_001, "what colour is it ?", "look .", "green", "red", "blue", "", "B", "colour", "perception", "1"],
        [2, "what shape ?", "", "circle", "square", "", "", "B", "shape", "perception", blue],
        [1_000_002, "what shape ?", "", "square", "circle", "", "", "A", "shape", "perception", "2"]])
    write_tsv(root / "data/mmbench/mmbench_dev_cn_20231003.tsv", header, [      # plain: rotations made here
        [7, "颜色?", "", "红", "蓝", "绿", "", "C", "颜色", "感知", red],
        [8, "形状?", "提示", "圆", "方", "", "", "A", "形状", "感知", blue]])
    write_tsv(root / "data/mmbench/mmbench_test_en_20231003.tsv",
              [column for column in header if column != "answer"], [
                  [21, "what is it ?", "", "a", "b", "c", "d", "x", "y", red],
                  [22, "how many ?", "", "1", "2", "", "", "x", "y", blue],
                  [23, "where ?", "", "left", "right", "", "", "x", "y", red]])
    for number in range(3):
        picture(root / f"data/scienceqa/images/test/{number}/image.png", (32 + 8 * number, 32), (200, 200, 40))
        picture(root / f"data/SEED/SEED-Bench-image/{number}.jpg", (48, 32 + 8 * number), (40, 200, 200))
    write_jsonl(root / "data/scienceqa/scienceqa_test_img.jsonl", [
        {"image": f"data/scienceqa/images/test/{n}/image.png", "question": "which is red ?",
         "choices": ["red", "blue", "green"][: 2 + n % 2], "answer": n % 2, "hint": "" if n else "colours",
         "subject": "natural science"} for n in range(3)])
    write_jsonl(root / "data/SEED/seed.jsonl", [
        {"question_id": f"s{n}", "image": f"SEED-Bench-image/{n}.jpg",
         "text": "how many ?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer with the option's letter from the given choices directly.",
         "answer": "ABCD"[n], "category": "count"} for n in range(3)])
    questions, short = [], "Answer the question using a single word or phrase."
    for category in ("adversarial", "random"):
        labels = []
        for position, label in enumerate(("yes", "no")):
            image = f"COCO_val2014_{len(questions):012d}.jpg"
            picture(root / "data/pope/val2014" / image, (36, 28), (120, 120, 120))
            questions.append({"question_id": len(questions) + 1, "image": image,
                              "text": f"is there a dog ?\n{short}", "category": category})
            labels.append({"question_id": position + 1, "image": image, "label": label})
        write_jsonl(root / f"data/pope/coco/coco_pope_{category}.json", labels)
    write_jsonl(root / "data/pope/llava_pope_test.jsonl", questions)
    lists = root / "eval/mme/Your_Results"
    lists.mkdir(parents=True)
    for subtask in ("existence", "code_reasoning"):
        lines = []
        for image in ("a.png", "b.png"):
            picture(root / "data/mme/MME_Benchmark_release_version" / subtask / image, (30, 30), (10, 200, 10))
            lines += [f"{image}\tis there a circle ? Please answer yes or no.\tYes",
                      f"{image}\tis there a square ? Please answer yes or no.\tNo"]
        (lists / f"{subtask}.txt").write_text("\n".join(lines) + "\n")


def assert_complete_and_rescorable(out_dir: Path, task_name: str, root: Path, data: Path | None = None) -> list[dict]:
    """Every item exactly once in dataset order; metrics.json equals rescoring predictions.jsonl alone."""
    items = get_task(task_name).load(TaskInputs(data_root=root, image_root=root, data_file=data))
    rows = predictions(out_dir, task_name)
    assert [row["id"] for row in rows] == [item.id for item in items]
    assert all(isinstance(row["prediction"], str) and "skipped" not in row for row in rows)
    written = metrics(out_dir, task_name)
    assert written == rescore(task_name, out_dir / task_name / "predictions.jsonl")
    assert written["n"] == len(items)
    return rows


# ----------------------------------------------------------------------------- multiple choice, POPE, MME

@pytest.fixture(scope="module")
def single_image_run(native_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("breadth_data")
    make_single_image_data(root)
    out_dir = tmp_path_factory.mktemp("breadth_out")
    result = torchrun(2, ["--checkpoint", native_checkpoint, "--task", ",".join(SINGLE_IMAGE_TASKS),
                          "--data-root", root, "--out-dir", out_dir, *COMMON])
    assert result.returncode == 0, explain(result)
    return root, out_dir


def test_mmbench_circular_run_is_complete_and_rescores_identically(single_image_run):
    root, out_dir = single_image_run
    rows = assert_complete_and_rescorable(out_dir, "mmbench_dev_en", root)
    assert [row["circular_group"] for row in rows] == [1, 1, 1, 2, 2]
    written = metrics(out_dir, "mmbench_dev_en")
    assert written["metric"] == "circular_accuracy" and written["scale"] == "percent"
    assert written["metrics"]["circular"] is True and written["metrics"]["n_questions"] == 2
    assert {"category/colour", "category/shape", "l2_category/perception"} <= set(written["metrics"])


def test_generated_rotations_run_one_item_per_rotation(single_image_run):
    root, out_dir = single_image_run
    rows = assert_complete_and_rescorable(out_dir, "mmbench_dev_cn_circular", root)
    assert [row["id"] for row in rows] == ["7", "7@r1", "7@r2", "8", "8@r1"]
    assert metrics(out_dir, "mmbench_dev_cn_circular")["metrics"]["n_questions"] == 2


def test_mmbench_test_split_is_unscored_and_its_tsv_lists_every_row(single_image_run):
    root, out_dir = single_image_run
    rows = assert_complete_and_rescorable(out_dir, "mmbench_test_en", root)
    written = metrics(out_dir, "mmbench_test_en")
    assert written["scale"] == "unscored" and written["metrics"]["n_scored"] == 0
    expected_tsv = get_task("mmbench_test_en").extra_outputs(rows)["predictions.tsv"]
    table = list(csv.reader(io.StringIO(expected_tsv), delimiter="\t"))
    assert table[0] == ["index", "question", "A", "B", "C", "D", "prediction"]
    assert [line[0] for line in table[1:]] == ["21", "22", "23"]
    written_tsv = out_dir / "mmbench_test_en" / "predictions.tsv"
    assert written_tsv.read_text(encoding="utf-8") == expected_tsv


@pytest.mark.parametrize("task_name", ["scienceqa_test", "seed_image"])
def test_scienceqa_and_seed_runs_are_complete_and_rescore_identically(single_image_run, task_name):
    root, out_dir = single_image_run
    assert_complete_and_rescorable(out_dir, task_name, root)
    written = metrics(out_dir, task_name)
    assert written["metric"] == "accuracy" and written["metrics"]["n_scored"] == 3


def test_pope_run_reports_every_category(single_image_run):
    root, out_dir = single_image_run
    assert_complete_and_rescorable(out_dir, "pope", root)
    written = metrics(out_dir, "pope")
    assert written["metric"] == "f1"
    for category in ("adversarial", "random"):
        assert {f"{category}/{key}" for key in ("accuracy", "precision", "recall", "f1", "yes_ratio")} \
            <= set(written["metrics"])


def test_mme_run_reports_subtasks_and_totals(single_image_run):
    root, out_dir = single_image_run
    assert_complete_and_rescorable(out_dir, "mme", root)
    written = metrics(out_dir, "mme")["metrics"]
    assert written["mme_total"] == pytest.approx(written["perception"] + written["cognition"])
    assert written["perception"] == pytest.approx(written["existence/score"])
    assert written["cognition"] == pytest.approx(written["code_reasoning/score"])
    assert 0 <= written["existence/acc_plus"] <= written["existence/acc"] <= 100


# ----------------------------------------------------------------------------- captioning

@pytest.fixture(scope="module")
def caption_run(native_checkpoint, tmp_path_factory):
    problem = caption_scorer_problem()
    if problem is not None:
        pytest.skip(problem)
    root = tmp_path_factory.mktemp("caption_data")
    entries, annotations = [], []
    for number in range(1, 4):
        name = f"val2014/COCO_val2014_{number:012d}.jpg"
        picture(root / "data/coco" / name, (40, 24 + 8 * number), (30 * number, 90, 160))
        entries.append({"image": name, "caption": []})
        annotations += [{"image_id": number, "id": 10 * number + k, "caption": caption}
                        for k, caption in enumerate((f"a picture number {number} .", "a blue square ."))]
    (root / "data/coco/annotations").mkdir(parents=True, exist_ok=True)
    (root / "data/coco/annotations/coco_karpathy_test.json").write_text(json.dumps(entries))
    (root / "data/coco/annotations/coco_karpathy_test_gt.json").write_text(json.dumps(
        {"images": [{"id": n} for n in range(1, 4)], "annotations": annotations}))
    out_dir = tmp_path_factory.mktemp("caption_out")
    result = torchrun(2, ["--checkpoint", native_checkpoint, "--task", "coco_karpathy_test", "--data-root", root,
                          "--out-dir", out_dir, *COMMON])
    assert result.returncode == 0, explain(result)
    return root, out_dir


def test_caption_run_is_complete_and_rescores_identically(caption_run):
    root, out_dir = caption_run
    rows = assert_complete_and_rescorable(out_dir, "coco_karpathy_test", root)
    assert [len(row["answer"]) for row in rows] == [2, 2, 2]
    written = metrics(out_dir, "coco_karpathy_test")
    assert written["metric"] == "CIDEr" and written["scale"] == "CIDEr x100"
    assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"} <= set(written["metrics"])


# ----------------------------------------------------------------------------- several images per item

@pytest.fixture(scope="module")
def multi_image_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi_image_data")
    records = []
    for number in range(5):
        paths = [f"images/{number}_{k}.png" for k in range(2 + number % 2)]      # 2 or 3 images per item
        for k, path in enumerate(paths):
            picture(root / path, (28 + 8 * k, 28 + 4 * number), (60 * k, 100, 200))
        records.append({"question_id": f"m{number}", "images": paths,
                        "question": "which image is red ?", "options": [f"({l}) image {i + 1}" for i, l in
                                                                         zip(range(len(paths)), "ABC")],
                        "answer": "A", "category": "colour"})
    data = write_jsonl(root / "multi_image.jsonl", records)
    return root, data


@pytest.fixture(scope="module")
def multi_image_native_run(native_checkpoint, multi_image_data, tmp_path_factory):
    root, data = multi_image_data
    out_dir = tmp_path_factory.mktemp("multi_native")
    result = torchrun(2, ["--checkpoint", native_checkpoint, "--task", "multi_image_mc", "--data", data,
                          "--data-root", root, "--out-dir", out_dir, *COMMON])
    assert result.returncode == 0, explain(result)
    return out_dir


def test_native_adapter_runs_items_with_several_images(multi_image_native_run, multi_image_data):
    root, data = multi_image_data
    rows = assert_complete_and_rescorable(multi_image_native_run, "multi_image_mc", root, data)
    assert [len(row["images"]) for row in rows] == [2, 3, 2, 3, 2]


def test_internvl_remote_code_adapter_runs_items_with_several_images(remote_checkpoint, multi_image_data,
                                                                      multi_image_native_run, tmp_path):
    root, data = multi_image_data
    result = launch(["--checkpoint", remote_checkpoint, "--trust-remote-code", "--task", "multi_image_mc",
                     "--data", data, "--data-root", root, "--out-dir", tmp_path, *COMMON])
    assert result.returncode == 0, explain(result)
    rows = assert_complete_and_rescorable(tmp_path, "multi_image_mc", root, data)
    assert len(rows) == 5
