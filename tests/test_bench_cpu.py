"""CPU smoke of every benchmark script with the tiny model: the JSON has its fields and sane values."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.runs import free_port


REPO = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--max-new-tokens", "3", "--num-workers", "1"]
IN_PROCESS = ["--device", "cpu", "--max-new-tokens", "3", "--num-workers", "0"]   # no worker forks: faster


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "NCCL_NVLS_ENABLE": "0", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _sane_rate(row: dict) -> None:
    """items_per_s is items / the unrounded seconds; `seconds` is shown rounded to 1 ms and items_per_s to
    0.01 (on a loaded CPU a run of 2 items in 14 s gives 0.14 for 0.1399..0.135), so allow for both."""
    assert row["items"] > 0 and row["seconds"] > 0
    slowest, fastest = row["seconds"] + 0.0005, max(row["seconds"] - 0.0005, 1e-9)
    assert row["items"] / slowest * 0.99 - 0.005 <= row["items_per_s"] <= row["items"] / fastest * 1.01 + 0.005


def test_throughput_single_process_reports_every_mode(tmp_path):
    from bench import throughput

    out = tmp_path / "single.json"
    assert throughput.main(TINY + ["--items", "8", "--loop-items", "3", "--batch-sizes", "4", "--hf-batch-size", "4",
                                   "--plain-batch-sizes", "4", "--repeats", "1", "--sections", "loop,plain,hf,ours",
                                   "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["kind"] == "throughput_single" and report["shape"] == "tiny"
    assert [row["mode"] for row in report["rows"]] == [
        "internvl_loop", "plain generate, pre-made inputs on the GPU",
        "plain generate, pre-made inputs on the GPU, cuDNN SDPA off", "hf_batched", "ours"]
    for row in report["rows"]:
        _sane_rate(row)
    assert report["rows"][0]["items"] == 3 and report["rows"][1]["items"] == 8 and report["rows"][4]["items"] == 8
    # Greedy ids of ours (our decoding loop) against the batch-1 loop (transformers' generate), on the tiny
    # model's sharp logits: equal.
    assert report["rows"][4]["agreement_vs_batch1"]["items"] == 3
    assert report["rows"][4]["agreement_vs_batch1"]["exact_sequence"] == 1.0
    assert report["rows"][4]["waiting_for_data_s"] >= 0 and report["rows"][4]["first_batch_ready_s"] > 0
    assert report["model"]["attn_implementation"] == {"text": "sdpa", "vision": "sdpa"}


def test_throughput_workers_compare_static_and_dynamic_schedules(tmp_path):
    out = tmp_path / "multi.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "bench.throughput", "--worker", *TINY, "--items", "8", "--skewed-items", "8",
               "--batch-sizes", "2", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and set(report["sets"]) == {"realistic", "skewed"}
    for entry in report["sets"].values():
        phases = entry["phases"]
        assert set(phases) == {"one_gpu", "static", "dynamic"}
        assert phases["one_gpu"]["items"] == 8
        for schedule in ("static", "dynamic"):
            assert phases[schedule]["items"] == 8                      # every item exactly once over the ranks
            assert len(phases[schedule]["per_rank"]) == 2
            assert phases[schedule]["slowest_over_fastest"] >= 1.0
        assert [r["items"] for r in phases["static"]["per_rank"]] == [4, 4]
    assert report["sets"]["skewed"]["set"]["heavy_items"] >= 1


def test_split_mode_single_split_and_big_report_memory_and_agreement(tmp_path):
    from bench import split_mode

    common = IN_PROCESS + ["--items", "2", "--quant-items", "2", "--batch-size", "2", "--scratch", str(tmp_path / "s")]
    assert split_mode.main(["--mode", "single", *common, "--out", str(tmp_path / "single.json")]) == 0
    assert split_mode.main(["--mode", "split", *common, "--out", str(tmp_path / "split.json")]) == 0
    assert split_mode.main(["--mode", "big", *common, "--out", str(tmp_path / "big.json")]) == 0
    single = json.loads((tmp_path / "single.json").read_text())
    assert [row["precision"] for row in single["rows"]] == ["bf16", "8bit", "4bit"]
    for row in single["rows"]:
        _sane_rate(row)
        assert "weights_gib" in row and "peak_gib" in row
    split = json.loads((tmp_path / "split.json").read_text())
    assert [(row["layout"], row["precision"]) for row in split["rows"]] == [
        ("split over 2 (planner)", "bf16"), ("split over 2 (internvl)", "bf16"),
        ("split over 2 (planner)", "8bit"), ("split over 2 (planner)", "4bit")]
    for row in split["rows"]:
        _sane_rate(row)
        assert sum(row["layers_per_gpu"].values()) == 4                   # the tiny model's decoder layers
        assert len(row["layers_per_gpu"]) == 2
    # The weights do not depend on the device map: the split model predicts what the one-device model does.
    assert split["rows"][0]["agreement_vs_one_gpu"]["exact_sequence"] == 1.0
    big = json.loads((tmp_path / "big.json").read_text())["rows"][0]
    assert big["finite_logits"] is True
    assert big["deterministic_repeat"]["exact_sequence"] == 1.0
    assert big["agreement_batch1_vs_batch"]["items"] >= 1


def test_split_mode_replicas_meet_at_the_barrier_and_combine(tmp_path):
    common = ["-m", "bench.split_mode", "--mode", "replica", *TINY, "--items", "4", "--batch-size", "2",
              "--scratch", str(tmp_path / "s")]
    out = tmp_path / "replicas.json"
    first = subprocess.Popen([sys.executable, *common, "--replica-index", "0", "--out", str(out)], cwd=REPO, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.run([sys.executable, *common, "--replica-index", "1"], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=120)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, stderr[-2000:] + second.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["replica"] for r in report["replicas"]] == [0, 1]
    assert report["rows"][0]["items"] == 4
    _sane_rate(report["rows"][0])


def test_profile_generate_splits_plain_generate_into_phases(tmp_path):
    from bench import profile_generate

    out = tmp_path / "profile.json"
    assert profile_generate.main(["--device", "cpu", "--items", "8", "--batch-sizes", "4", "--max-new-tokens", "3",
                                  "--num-workers", "0", "--collate-items", "4", "--sections", "kernels",
                                  "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    plain, phased = report["rows"]
    _sane_rate(plain)
    assert phased["batches"] == plain["batches"] >= 2 and phased["items"] == plain["items"] == 8
    ms = phased["ms"]
    assert ms["vision"] > 0 and ms["prefill_language"] > 0 and ms["decode"] > 0
    assert ms["vision"] + ms["prefill_language"] + ms["decode"] <= ms["wall"] * 1.01
    assert phased["decode_ms_per_step"] > 0 and phased["tflop_per_item"] > 0
    assert report["floor_items_per_s_at_peak"] > 0 and report["collate_ms_per_item_one_thread"] > 0
    assert Path(report["kernel_profile"]["table_file"]).is_file()


def test_convert_speed_compares_converted_at_load_convert_output_and_native(tmp_path):
    from bench import convert_speed

    out = tmp_path / "convert.json"
    assert convert_speed.main(["--device", "cpu", "--items", "4", "--batch-size", "2", "--max-new-tokens", "3",
                               "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["kind"] == "convert_speed"
    rows = report["rows"]
    assert [row["adapter"] for row in rows] == ["native_image_text", "internvl_converted", "internvl_converted"]
    for row in rows:
        _sane_rate(row)
        assert row["load_s"] > 0 and "fast_decode" in row["decode"]
    # The same weights, reached three ways: the two converted folders predict identically.
    assert rows[1]["agreement_with_convert_output"] == 1.0


def test_preflight_bench_finds_exactly_the_deleted_files_at_every_thread_count(tmp_path):
    from bench import preflight

    out = tmp_path / "preflight.json"
    assert preflight.main(["--files", "3000", "--missing", "7", "--threads", "1,4", "--repeats", "1",
                           "--dir", str(tmp_path), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["kind"] == "preflight" and report["files"] == 3000
    assert [(row["threads"], row["missing_found"]) for row in report["rows"]] == [(1, 7), (4, 7)]
    assert all(row["median_s"] > 0 and row["files_per_s"] > 0 for row in report["rows"])
    assert [path.name for path in tmp_path.iterdir()] == ["preflight.json"]     # its files are cleaned up


def test_prefix_bench_reports_sharing_speedups_batch_choices_and_waits(tmp_path):
    from bench import prefix

    out = tmp_path / "prefix.json"
    assert prefix.main(IN_PROCESS + ["--pope-items", "36", "--docvqa-items", "8", "--distinct-items", "8",
                                     "--batch-sizes", "8", "--warmup-items", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    modes = [(row["set"], row["mode"]) for row in report["rows"]]
    assert modes == [("pope", "ours, default flags (auto batch, prefix sharing)"),
                     ("pope", "ours, --no-prefix-sharing (same batch size)"),
                     ("docvqa", "ours, default flags (auto batch, prefix sharing)"),
                     ("docvqa", "ours, --no-prefix-sharing (same batch size)"),
                     ("distinct", "ours, default flags (auto batch, prefix sharing)"),
                     ("distinct", "ours, --batch-size 8")]
    for row in report["rows"]:
        _sane_rate(row)
        assert 0 <= row["wait_before_first_batch_s"] < row["seconds"]
        assert 0 <= row["gpu_idle_share_after_first_batch"] < 1
    pope_shared, pope_alone = report["rows"][0], report["rows"][1]
    assert pope_shared["batch_source"] == "cpu" and pope_alone["batch_size"] == pope_shared["batch_size"] == 16
    assert pope_shared["shared"]["items"] == 36 and pope_shared["shared"]["prefixes"] < 36   # 2 images, 18 each
    assert pope_alone["shared"]["items"] == 0
    # The tiny model's sharp logits: sharing changes no token.
    assert pope_alone["agreement_shared_vs_unshared"]["exact_sequence"] == 1.0
    assert report["rows"][3]["agreement_shared_vs_unshared"]["exact_sequence"] == 1.0
    assert report["rows"][4]["shared"]["items"] == 0                                    # distinct: nothing shared
    assert set(report["ratios"]) == {"pope_sharing_speedup", "docvqa_sharing_speedup", "default_over_best_fixed"}
    assert report["sets"]["docvqa"]["dynamic"] and report["sets"]["pope"]["distinct_images"] == 2


def test_prefix_bench_compares_joining_the_next_batch_in_a_thread_with_joining_it_after(tmp_path):
    from bench import prefix

    out = tmp_path / "join.json"
    assert prefix.main(TINY + ["--sets", "pope", "--pope-items", "36", "--compare-join-ahead", "1",
                               "--warmup-items", "0", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["join_ahead"] for row in rows] == [True, False]
    for row in rows:
        _sane_rate(row)
        assert row["items"] == 36 and 0 < row["busy_s"] <= row["seconds"]


def test_split_sharing_bench_reports_both_modes_and_their_agreement(tmp_path):
    from bench import split_sharing

    out = tmp_path / "split.json"
    assert split_sharing.main(IN_PROCESS + ["--items", "36", "--batch-size", "12", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    shared, alone = report["rows"]
    assert (shared["mode"], alone["mode"]) == ("prefix sharing", "--no-prefix-sharing")
    assert shared["shared"]["items"] == 36 and shared["shared"]["prefixes"] < 36 and alone["shared"]["items"] == 0
    assert report["agreement_shared_vs_unshared"]["exact_sequence"] == 1.0     # the tiny model's sharp logits
    assert report["sharing_speedup"] > 0
