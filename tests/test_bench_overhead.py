"""Quick checks of bench/overhead.py (gather section, small) and bench/timeline.py (PNG from a built run.json)."""
from __future__ import annotations

import json

import pytest

from bench import overhead, timeline

pytestmark = pytest.mark.timeout(60)


def test_overhead_gather_small_reports_every_part(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    assert overhead.main(["--sections", "gather", "--items", "2000", "--ranks", "4", "--repeats", "2",
                          "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["kind"] == "overhead" and "startup" not in report
    assert report["machine"]["cpus"] >= 1
    gather = report["gather"]
    assert (gather["items"], gather["ranks"], gather["rows_per_rank"], gather["answers_per_item"]) == (2000, 4, 500, 10)
    assert gather["task"] == "vqa" and gather["metric"] == "vqa_accuracy" and gather["n_scored"] == 2000
    assert 0 < gather["score"] <= 100
    assert set(gather["parts_s"]) == set(overhead.GATHER_PARTS)
    assert all(value >= 0 for value in gather["parts_s"].values())
    assert len(gather["repeats"]) == 2 and len(gather["totals_s"]) == 2
    assert gather["total_s"] == pytest.approx(sum(gather["totals_s"]) / 2, abs=1e-3)   # median of two
    assert gather["target_s"] == 5.0 and isinstance(gather["meets_target"], bool)
    assert gather["journal_mib"] > 0 and gather["predictions_mib"] > 0
    assert "read_journals" in capsys.readouterr().out


def test_rank_startup_reads_the_timeline():
    entry = {"timeline": {"load_s": 2.0, "task_start_s": 2.1, "first_batch_s": 2.5, "busy_s": 0.3, "idle_s": 0.2,
                          "finish_s": 2.6, "batches": [[2.3, 2.5], [2.5, 2.6]]}}
    figures = overhead.rank_startup(entry, {"load_seconds": 1.5})
    assert figures["first_batch_after_load_s"] == pytest.approx(0.5)
    assert figures["plan_s"] == pytest.approx(0.1) and figures["first_batch_ready_s"] == pytest.approx(0.2)
    assert figures["first_batch_generate_s"] == pytest.approx(0.2)
    assert figures["first_batch_minus_weights_s"] == pytest.approx(1.0)
    idle = {"timeline": dict(entry["timeline"], first_batch_s=None, batches=[])}
    assert overhead.rank_startup(idle, None)["first_batch_after_load_s"] is None


def _run_json(schedule: str, finishes: list[float]) -> dict:
    per_rank = []
    for rank, finish in enumerate(finishes):
        start = 1.0 + 0.1 * rank
        batches, moment = [], start + 0.05
        while moment + 0.2 <= finish:
            batches.append([round(moment, 3), round(moment + 0.2, 3)])
            moment += 0.25
        busy = sum(end - begin for begin, end in batches)
        per_rank.append({"items": 4 * len(batches), "batches": len(batches), "timeline": {
            "load_s": start - 0.05, "task_start_s": start, "first_batch_s": batches[0][1], "busy_s": round(busy, 3),
            "idle_s": round(finish - start - busy, 3), "finish_s": finish, "batches": batches}})
    return {"status": "done", "arguments": {"schedule": schedule}, "topology": {"world_size": len(finishes)},
            "tasks": {"synthetic_shapes": {"n": 40, "per_rank": per_rank}}}


def test_timeline_renders_two_runs_side_by_side(tmp_path):
    from PIL import Image

    static, dynamic = _run_json("static", [4.0, 2.0, 2.2]), _run_json("dynamic", [2.9, 2.8, 2.85])
    paths = []
    for name, run in (("static", static), ("dynamic", dynamic)):
        path = tmp_path / name / "run.json"
        path.parent.mkdir()
        path.write_text(json.dumps(run))
        paths.append(str(path))
    out = tmp_path / "timeline.png"
    assert timeline.main([*paths, "--task", "synthetic_shapes", "--out", str(out)]) == 0
    expected = timeline.image_size(2, 3)
    assert expected == (2 * timeline.PANEL_WIDTH, timeline.TITLE_H + 3 * timeline.ROW_H + timeline.AXIS_H
                        + timeline.LEGEND_H + 2 * timeline.MARGIN)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == expected
        rgb = image.convert("RGB")
        colours = {colour for _, colour in rgb.getcolors(maxcolors=1 << 16)}
    assert out.stat().st_size < 200_000
    # Busy bars and idle time are drawn (palette PNG: the exact flat colours survive).
    assert timeline.COLORS["busy"] in colours and timeline.COLORS["load"] in colours
    # One run alone: one panel.
    single = tmp_path / "single.png"
    assert timeline.render([static], "synthetic_shapes", single) == timeline.image_size(1, 3)
    summary = timeline.summary(static, "synthetic_shapes")
    assert summary["slowest_finish_s"] == 4.0 and summary["slowest_over_fastest"] > 2


def test_timeline_refuses_a_run_without_timelines(tmp_path):
    run = _run_json("static", [2.0])
    del run["tasks"]["synthetic_shapes"]["per_rank"][0]["timeline"]
    with pytest.raises(SystemExit, match="timeline"):
        timeline.render([run], "synthetic_shapes", tmp_path / "x.png")
