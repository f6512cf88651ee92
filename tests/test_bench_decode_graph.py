"""CPU smoke of bench/decode_graph.py with the tiny model: every mode reports, eager steps agree with generate."""
from __future__ import annotations

import json

import pytest


@pytest.mark.timeout(120)
def test_decode_graph_bench_on_cpu_reports_generate_and_the_eager_step(tmp_path):
    from bench import decode_graph

    out = tmp_path / "decode_graph.json"
    assert decode_graph.main(["--device", "cpu", "--items", "8", "--batch-sizes", "4", "--max-new-tokens", "3",
                              "--num-workers", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["kind"] == "decode_graph" and report["modes"] == ["hf", "eager"]   # no CUDA graph on CPU
    assert report["unsupported_reason"] is None
    hf, eager = report["rows"]
    assert hf["mode"] == "hf generate (dynamic cache)" and eager["mode"] == "fast_decode, eager step"
    for row in (hf, eager):
        assert row["items"] == 8 and row["items_per_s"] > 0 and row["decode_steps"] >= 0
    # float32 on CPU and the tiny model's sharp logits: the same tokens as generate.
    assert eager["agreement_vs_generate"] == {"items": 8, "first_token": 1.0, "exact_sequence": 1.0}


def test_agreement_compares_up_to_eos_and_ignores_the_padding_after_it():
    from bench.decode_graph import agreement

    reference = [[5, 2, 0, 0], [7, 8, 9, 1], [3, 3, 3, 3]]
    other = [[5, 2], [7, 8, 1, 1], [4, 3, 3, 3]]
    assert agreement(reference, other, eos_token_id=2) == {"items": 3, "first_token": 0.6667,
                                                           "exact_sequence": 0.3333}
