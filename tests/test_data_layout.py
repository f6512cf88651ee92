"""--data-root as InternVL's internvl_chat folder or as its data/ folder: every preset reads the same items.

The tree comes from tests/internvl_tree.py, whose paths are InternVL's own (not our declarations), so these
tests also check every preset's declared files against InternVL's layout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval_scripts.base import DataError, ImageBytes, TaskInputs
from eval_scripts.data_layout import declared_candidates, image_relative_path
from eval_scripts.registry import get_task, task_names
from tests.internvl_tree import EXPECTED_ITEMS, build_internvl_chat
from tests.runs import LAUNCH, child_env, explain

# Tasks that read the user's own files (--data) or the demo's, not InternVL's tree.
NOT_INTERNVL_PRESETS = {"vqa", "multi_image_mc", "synthetic_shapes"}


@pytest.fixture(scope="module")
def internvl_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_internvl_chat(tmp_path_factory.mktemp("internvl"))


def load(task_name: str, data_root: Path, image_root: Path | None = None):
    inputs = TaskInputs(data_root=data_root, image_root=image_root if image_root is not None else data_root)
    return get_task(task_name).load(inputs)


def test_the_tree_covers_every_internvl_preset() -> None:
    assert set(EXPECTED_ITEMS) == set(task_names()) - NOT_INTERNVL_PRESETS
    assert len(EXPECTED_ITEMS) == 25


@pytest.mark.parametrize("task_name", sorted(EXPECTED_ITEMS))
def test_every_preset_reads_the_same_items_from_internvl_chat_and_from_its_data_folder(
        internvl_chat: Path, task_name: str) -> None:
    from_chat = load(task_name, internvl_chat)
    from_data = load(task_name, internvl_chat / "data")
    assert len(from_chat) == EXPECTED_ITEMS[task_name]
    assert from_data == from_chat                   # ids, questions, answers, fields and image paths
    for item in from_chat:
        for image in item.images:
            assert isinstance(image, ImageBytes) or Path(image).is_file(), image


def test_a_data_folder_under_another_name_works_too(internvl_chat: Path, tmp_path: Path) -> None:
    # The data/ folder is recognised by what it holds, not by its name (here a link named "datasets").
    link = tmp_path / "datasets"
    os.symlink(internvl_chat / "data", link)
    items = load("textvqa_val", link)
    assert items[0].images == (link / "textvqa/train_images/0000000000000001.jpg",)
    assert items[0].answer == ["a1"] * 10                   # the annotation file was found as well
    assert len(load("pope", link)) == EXPECTED_ITEMS["pope"]


def test_an_explicit_image_root_at_internvl_chat_keeps_the_paths_as_written(internvl_chat: Path) -> None:
    items = load("docvqa_val", internvl_chat / "data", image_root=internvl_chat)
    assert items[0].images == (internvl_chat / "data/docvqa/val/documents/doc1_1.png",)


@pytest.mark.parametrize("declared, expected", [
    ("data/textvqa/val.jsonl", ("R/data/textvqa/val.jsonl", "R/textvqa/val.jsonl")),
    ("eval/mme/Your_Results", ("R/eval/mme/Your_Results", "eval/mme/Your_Results")),
    ("synthetic/test.jsonl", ("R/synthetic/test.jsonl",)),
])
def test_declared_path_candidates(declared: str, expected: tuple[str, ...]) -> None:
    # R stands for the data root "R"; the MME lists are looked for beside it (its parent: ".").
    assert tuple(map(str, declared_candidates(Path("R"), declared))) == expected


def test_image_paths_drop_data_only_where_the_root_has_no_data_folder(tmp_path: Path) -> None:
    assert image_relative_path(tmp_path / "missing", "data/x/1.jpg") == "data/x/1.jpg"
    assert image_relative_path(tmp_path, "data/x/1.jpg") == "x/1.jpg"
    assert image_relative_path(tmp_path, "/data/x/1.jpg") == "/data/x/1.jpg"
    assert image_relative_path(tmp_path, "x/1.jpg") == "x/1.jpg"
    (tmp_path / "data").mkdir()
    assert image_relative_path(tmp_path, "data/x/1.jpg") == "data/x/1.jpg"


def test_outside_the_image_root_is_still_refused_from_a_data_folder(internvl_chat: Path, tmp_path: Path) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question_id": 1, "image": "data/../../secret.jpg", "question": "q?"}) + "\n")
    inputs = TaskInputs(data_root=internvl_chat / "data", image_root=internvl_chat / "data", data_file=data,
                        metric="exact_match")
    with pytest.raises(DataError, match="outside the image root"):
        get_task("vqa").load(inputs)


@pytest.mark.parametrize("task_name, declared", [
    ("textvqa_val", "textvqa/textvqa_val.jsonl"),
    ("mme", "eval/mme/Your_Results"),
])
def test_a_missing_file_names_both_places_tried(tmp_path: Path, task_name: str, declared: str) -> None:
    root = tmp_path / "somewhere"
    root.mkdir()
    with pytest.raises(DataError) as raised:
        load(task_name, root)
    message = str(raised.value)
    first, second = declared_candidates(root, get_task(task_name).files["data"])
    assert f"tried {first} (--data-root as InternVL's internvl_chat folder) or {second} (--data-root as its " \
           f"data/ folder)" in message
    assert message.endswith("pass --data-root DIR (InternVL's internvl_chat folder or its data/ folder) or "
                            "--data FILE")
    assert declared in str(second)


# ----------------------------------------------------------------------------- the README's quick start

def run_launcher(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, LAUNCH, *map(str, args)], capture_output=True, text=True,
                          timeout=240, env=child_env(), cwd=cwd)


@pytest.mark.timeout(300)
def test_quick_start_with_data_root_data_runs_every_item(native_checkpoint, internvl_chat: Path,
                                                         tmp_path: Path) -> None:
    # The README's command, run from InternVL's internvl_chat folder: `--data-root data/`.
    out_dir = tmp_path / "out"
    result = run_launcher(["--checkpoint", native_checkpoint, "--task", "textvqa_val,docvqa_val",
                           "--data-root", "data/", "--out-dir", out_dir, "--batch-size", "2",
                           "--max-new-tokens", "2", "--num-workers", "0"], cwd=internvl_chat)
    assert result.returncode == 0, explain(result)
    for task_name in ("textvqa_val", "docvqa_val"):
        rows = [json.loads(line) for line in (out_dir / task_name / "predictions.jsonl").read_text().splitlines()]
        assert [row["id"] for row in rows] == ["1", "2"]
        assert not any("skipped" in row for row in rows)
    assert json.loads((out_dir / "run.json").read_text())["status"] == "done"


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_a_data_root_holding_neither_layout_is_one_line_exit_2(tmp_path: Path, num_workers: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_launcher(["--checkpoint", tmp_path / "never-loaded", "--task", "textvqa_val", "--data-root",
                           empty, "--out-dir", tmp_path / "out", "--num-workers", num_workers], cwd=tmp_path)
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr
    assert f"tried {empty}/data/textvqa/textvqa_val.jsonl (--data-root as InternVL's internvl_chat folder) or " \
           f"{empty}/textvqa/textvqa_val.jsonl (--data-root as its data/ folder)" in result.stderr


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_a_pope_label_file_longer_than_its_questions_is_one_line_exit_2(internvl_chat: Path, tmp_path: Path,
                                                                         num_workers: str) -> None:
    # POPE's current coco_pope_random.json (3000 labels) beside LLaVA's questions (2910 random ones), in small.
    chat = tmp_path / "chat"
    (chat / "data/pope/coco").mkdir(parents=True)
    (chat / "data/pope/llava_pope_test.jsonl").write_text(
        (internvl_chat / "data/pope/llava_pope_test.jsonl").read_text())
    for category in ("adversarial", "popular", "random"):
        source = (internvl_chat / f"data/pope/coco/coco_pope_{category}.json").read_text()
        extra = json.dumps({"question_id": 99, "image": "COCO_val2014_000000000099.jpg", "label": "no"}) + "\n"
        (chat / f"data/pope/coco/coco_pope_{category}.json").write_text(source + (extra if category == "random"
                                                                                  else ""))
    result = run_launcher(["--checkpoint", tmp_path / "never-loaded", "--task", "pope", "--data-root",
                           chat / "data", "--out-dir", tmp_path / "out", "--num-workers", num_workers], cwd=tmp_path)
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr
    assert (f"POPE label file {chat}/data/pope/coco/coco_pope_random.json holds 3 labels but the question file "
            f"{chat}/data/pope/llava_pope_test.jsonl has 2 'random' questions") in result.stderr
