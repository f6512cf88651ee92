"""Image files are checked before the model loads: missing ones stop the run at once, or are skipped."""
from __future__ import annotations

import json
import os
import threading

import pytest
import torch

from eval_scripts.base import ImageBytes, Item, TaskInputs
from eval_scripts.registry import get_task
from launcher import preflight
from launcher.preflight import BadImage, bad_images_error, check_images_everywhere, file_problem, find_bad_images
from tests.runs import explain, manifest, predictions, torchrun

pytestmark = pytest.mark.timeout(300)


def test_file_problem_names_what_is_wrong(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe")
    assert file_problem(image) is None
    assert file_problem(tmp_path / "missing.png") == "not found"
    assert file_problem(image / "below_a_file.png") == "not found"
    assert file_problem(tmp_path) == "a directory, not a file"
    assert file_problem(tmp_path / "pipe") == "not a regular file"


def test_every_bad_file_is_found_in_item_order_and_images_in_memory_are_not_files(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(b"x")
    items = [Item(id=f"q{index}", question="?", images=(good,)) for index in range(1500)]
    for index in (7, 600, 1499):
        items[index] = Item(id=f"q{index}", question="?", images=(good, tmp_path / f"gone{index}.png"))
    items[3] = Item(id="q3", question="?", images=(ImageBytes(b"not even an image", "tsv row 4"),))
    found = find_bad_images(items, threads=8)
    assert [(bad.index, bad.item_id, bad.reason) for bad in found] == [
        (7, "q7", "not found"), (600, "q600", "not found"), (1499, "q1499", "not found")]
    assert find_bad_images(items, indices=range(0, 600), threads=8) == found[:1]


def test_a_missing_file_is_named_with_its_data_file_and_line(tmp_path):
    data_root = tmp_path / "data"
    (data_root / "images").mkdir(parents=True)
    (data_root / "images" / "ok.png").write_bytes(b"x")
    lines = [{"question_id": index, "image": "images/ok.png" if index != 2 else "images/lost.png",
              "question": "what?", "answer": "a", "question_type": "color"} for index in range(4)]
    data = data_root / "test.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    items = get_task("synthetic_shapes").load(TaskInputs(data_root=data_root, image_root=data_root, data_file=data))
    (bad,) = find_bad_images(items)
    assert bad.describe() == f"{data_root / 'images' / 'lost.png'} ({data}:3, item '2'): not found"


def test_the_stop_lists_the_first_ten_with_the_total_and_the_flag():
    bad = [BadImage(index, f"q{index}", f"/img/{index}.png", f"d.jsonl:{index + 1}", "not found")
           for index in range(23)]
    message = str(bad_images_error("vqa", bad, checked=5000))
    lines = message.splitlines()
    assert lines[0] == "vqa: 23 image files cannot be read (of 5000 checked before loading the model); the first 10:"
    assert lines[1:11] == [f"  /img/{index}.png (d.jsonl:{index + 1}, item 'q{index}'): not found" for index in range(10)]
    assert lines[11] == "  ... and 13 more"
    assert "--on-bad-item skip" in lines[12]
    assert len(lines) == 13


def test_one_bad_file_is_one_line():
    message = str(bad_images_error("vqa", [BadImage(4, "q4", "/img/4.png", "d.jsonl:5", "not found")], checked=12))
    assert message == ("vqa: image file /img/4.png (d.jsonl:5, item 'q4'): not found (of 12 checked before loading "
                       "the model); fix the path or --image-root, or pass --on-bad-item skip to record the item as "
                       "skipped and go on")


def test_each_process_checks_only_its_share_and_all_get_every_finding(tmp_path, monkeypatch):
    """Three 'processes' (threads sharing a store) check 300 items: each stats its own 100 paths."""
    paths = [tmp_path / f"{index}.png" for index in range(300)]
    for index, path in enumerate(paths):
        if index not in (10, 150, 299):
            path.write_bytes(b"x")
    items = [Item(id=str(index), question="?", images=(path,)) for index, path in enumerate(paths)]
    checked_by: dict[str, set[str]] = {}
    real = preflight.file_problem

    def recording(path):
        checked_by.setdefault(threading.current_thread().name.split("_")[0], set()).add(str(path))
        return real(path)

    monkeypatch.setattr(preflight, "file_problem", recording)
    store = torch.distributed.HashStore()
    results = {}

    def process(rank: int) -> None:
        def wait_for(keys, what):
            while not store.check(keys):
                threading.Event().wait(0.01)

        threading.current_thread().name = f"rank{rank}"
        results[rank] = check_images_everywhere("t", items, rank, 3, store, wait_for, threads=1)

    threads = [threading.Thread(target=process, args=(rank,), name=f"rank{rank}") for rank in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert {rank: [bad.index for bad in found] for rank, found in results.items()} == {
        0: [10, 150, 299], 1: [10, 150, 299], 2: [10, 150, 299]}
    assert {name: len(paths) for name, paths in checked_by.items()} == {"rank0": 100, "rank1": 100, "rank2": 100}


@pytest.fixture(scope="module")
def data_with_a_missing_image(tmp_path_factory):
    from eval_scripts.synthetic import generate_benchmark

    root = tmp_path_factory.mktemp("preflight_data")
    generate_benchmark(root / "synthetic", n_items=12, seed=5, split="test")
    rows = [json.loads(line) for line in (root / "synthetic" / "test.jsonl").read_text().splitlines()]
    rows[4]["image"] = "synthetic/images/vanished.png"
    data = root / "missing.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root, data, str(rows[4]["question_id"])


def test_under_skip_a_missing_image_is_recorded_before_any_batch_and_never_reaches_a_worker(
        native_checkpoint, data_with_a_missing_image, tmp_path):
    root, data, missing_id = data_with_a_missing_image
    args = ["--checkpoint", native_checkpoint, "--task", "synthetic_shapes", "--data-root", root, "--data", data,
            "--out-dir", tmp_path, "--num-workers", "1", "--batch-size", "2", "--max-new-tokens", "4",
            "--on-bad-item", "skip"]
    result = torchrun(2, args)
    assert result.returncode == 0, explain(result)
    rows = predictions(tmp_path, "synthetic_shapes")
    assert len(rows) == 12
    skipped = [row for row in rows if "skipped" in row]
    # The preflight's reason (a worker would have said "item '4': image not found: ...").
    assert [(row["id"], row["skipped"]) for row in skipped] == [
        (missing_id, f"image {root / 'synthetic' / 'images' / 'vanished.png'}: not found")]
    first_journal_row = json.loads((tmp_path / "synthetic_shapes" / "shards" / "rank00000-attempt0000.jsonl")
                                   .read_text().splitlines()[0])
    assert first_journal_row["id"] == missing_id                  # written before the first batch
    assert json.loads((tmp_path / "synthetic_shapes" / "metrics.json").read_text())["n_skipped"] == 1
    assert manifest(tmp_path)["status"] == "done"

