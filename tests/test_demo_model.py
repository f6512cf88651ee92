"""The bundled trained demo model end to end: real scores, invariance to ranks, batch size and schedule.

The model in demo/checkpoint really answers the synthetic benchmark (docs/DEMO_MODEL.md), so these runs
check preprocessing, prompts, decoding and scoring, not just that files appear: a run that fed the wrong
image to an item would score at chance, as the shuffled-images test shows.
"""
from __future__ import annotations

import json
import random

import pytest

from tests.runs import ROOT, explain, launch, metrics, predictions, torchrun

CHECKPOINT = ROOT / "demo" / "checkpoint"
TASK = "synthetic_shapes"
N_ITEMS = 96
# Chance: colour 1/6, count 1/4, shape 1/3, position 1/2 -> about 31% overall on an even mix.
CHANCE_PERCENT = 31.0
pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not (CHECKPOINT / "config.json").is_file(), reason="demo/checkpoint missing")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from eval_scripts.synthetic import generate_benchmark

    root = tmp_path_factory.mktemp("demo_data")
    generate_benchmark(root / "synthetic", n_items=N_ITEMS, seed=1234, split="test")
    return root


def args(data_root, out_dir, *extra):
    return ["--checkpoint", CHECKPOINT, "--task", TASK, "--data-root", data_root, "--out-dir", out_dir,
            "--num-workers", "1", *extra]


@pytest.fixture(scope="module")
def one_rank_batch_one(data_root, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("r1b1")
    result = launch(args(data_root, out_dir, "--batch-size", "1"))
    assert result.returncode == 0, explain(result)
    return out_dir


def test_one_rank_batch_one_scores_far_above_chance_on_every_type(one_rank_batch_one):
    scored = metrics(one_rank_batch_one, TASK)
    assert scored["n"] == N_ITEMS
    assert scored["score"] >= 80.0, scored
    for name, value in scored["metrics"].items():
        if name.startswith("exact_match/"):
            assert value >= 60.0, (name, scored["metrics"])


# Workers 2 and 3 prepare each batch of 8 in chunks (4+4, 3+3+2) that the runner joins.
@pytest.mark.parametrize("nproc,batch_size,schedule,workers", [(1, 8, "dynamic", 3), (2, 1, "static", 1),
                                                                (2, 8, "dynamic", 2), (2, 8, "static", 1)])
def test_predictions_do_not_depend_on_ranks_batch_size_schedule_or_workers(nproc, batch_size, schedule, workers,
                                                                           data_root, one_rank_batch_one, tmp_path):
    run_args = args(data_root, tmp_path, "--batch-size", str(batch_size), "--schedule", schedule,
                    "--num-workers", str(workers))
    result = launch(run_args) if nproc == 1 else torchrun(nproc, run_args)
    assert result.returncode == 0, explain(result)
    assert predictions(tmp_path, TASK) == predictions(one_rank_batch_one, TASK)
    assert metrics(tmp_path, TASK)["score"] == metrics(one_rank_batch_one, TASK)["score"]


def test_shuffling_images_between_items_drops_the_score_to_chance(data_root, one_rank_batch_one, tmp_path):
    lines = [json.loads(line) for line in (data_root / "synthetic" / "test.jsonl").read_text().splitlines()]
    images = [line["image"] for line in lines]
    random.Random(0).shuffle(images)
    for line, image in zip(lines, images):
        line["image"] = image
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = torchrun(2, args(data_root, tmp_path / "out", "--data", shuffled, "--batch-size", "8"))
    assert result.returncode == 0, explain(result)
    score = metrics(tmp_path / "out", TASK)["score"]
    assert score < CHANCE_PERCENT + 20, score
    assert score < metrics(one_rank_batch_one, TASK)["score"] - 30
