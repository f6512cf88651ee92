"""`--batch-size auto`: the arithmetic (tables of cases), the bytes per item of a real shape, the flag."""
from __future__ import annotations

import pytest

from launcher.batch_size import (CPU_BATCH_SIZE, GIB, MAX_AUTO_BATCH_SIZE, BatchSizeChoice, ItemBytes,
                                 auto_batch_size, choose_batch_size, item_bytes, memory_bound)
from launcher.cli import parse_args
from launcher.errors import UserError

MIB = 1 << 20


@pytest.mark.parametrize("free, per_item, expected", [
    (None, None, (CPU_BATCH_SIZE, "cpu", None)),                    # no GPU: a small batch
    (140 * GIB, 100 * MIB, (256, "cap", 1280)),                      # (126 - 1) GiB / 100 MiB = 1280 > cap
    (10 * GIB, 100 * MIB, (80, "memory", 81)),                       # (9 - 1) GiB / 100 MiB = 81.9 -> 81 -> 80
    (2 * GIB, 100 * MIB, (8, "memory", 8)),                          # (1.8 - 1) GiB -> 8
    (2 * GIB, 110 * MIB, (7, "memory", 7)),                          # below 8: not rounded
    (1 * GIB, 100 * MIB, (1, "memory", 0)),                          # nothing fits: 1 (the OOM split decides)
])
def test_choose_batch_size(free, per_item, expected):
    assert choose_batch_size(free, per_item) == expected


def test_the_cap_and_the_multiple_can_be_changed_and_are_checked():
    assert choose_batch_size(140 * GIB, MIB, cap=100) == (96, "cap", memory_bound(140 * GIB, MIB, GIB))
    assert choose_batch_size(140 * GIB, MIB, cap=100, multiple=1)[0] == 100
    with pytest.raises(ValueError, match="cap"):
        choose_batch_size(GIB, MIB, cap=0)
    with pytest.raises(ValueError, match="positive"):
        memory_bound(GIB, 0, 0)


def test_bytes_per_item_of_the_2b_shape_from_its_config():
    from bench.models import build_config

    config = build_config("2b")
    per_item, cache_tokens = item_bytes(config, dtype_bytes=2, prompt_tokens=300, new_tokens=16, tiles=1)
    assert cache_tokens == 320                                       # 300 + 16 rounded up to 64
    kv_per_token = 2 * 28 * 2 * 128 * 2                              # K and V, 28 layers, 2 KV heads of 128, bf16
    assert per_item.kv_cache == kv_per_token * 320 * 3               # 3 fast_decode shapes kept
    assert per_item.vision_activations == 1025 * (6 * 1024 + 4096) * 2
    assert per_item.llm_activations == 300 * (4 * 1536 + 2 * 8960) * 2
    assert per_item.logits == 2 * 151674 * 4
    choice = auto_batch_size(config, 2, 130 * GIB, 300, 16, 1)
    assert (choice.batch_size, choice.source) == (MAX_AUTO_BATCH_SIZE, "cap")
    # 13 tiles and 3,400 tokens (a DocVQA page with --dynamic --max-num 12): memory decides.
    heavy = auto_batch_size(config, 2, 130 * GIB, 3400, 16, 13)
    assert heavy.source == "memory" and 8 <= heavy.batch_size < MAX_AUTO_BATCH_SIZE
    assert heavy.batch_size == heavy.memory_bound - heavy.memory_bound % 8
    assert "13 tile(s)" in heavy.describe() and "3400 tokens" in heavy.describe()
    record = heavy.to_json()
    assert record["item_bytes"]["total"] == heavy.item_bytes.total and record["cache_tokens"] == 3456


def test_a_prompt_shorter_than_its_image_is_sized_by_the_image():
    from bench.models import build_config

    per_item, cache_tokens = item_bytes(build_config("2b"), 2, prompt_tokens=10, new_tokens=8, tiles=2)
    assert cache_tokens == 576 and per_item.llm_activations == 512 * (4 * 1536 + 2 * 8960) * 2


def test_without_a_gpu_auto_is_the_cpu_batch():
    choice = auto_batch_size(None, 4, None, 300, 16, 1)
    assert choice == BatchSizeChoice(CPU_BATCH_SIZE, "cpu") and choice.describe() == "batch size 16 (auto: CPU)"
    assert ItemBytes(1, 2, 3, 4).total == 10


@pytest.mark.parametrize("argv, expected", [([], None), (["--batch-size", "auto"], None), (["--batch-size", "8"], 8)])
def test_batch_size_flag_is_auto_by_default_and_a_number_wins(argv, expected):
    config = parse_args(["--checkpoint", "c", "--task", "t", *argv])
    assert config.batch_size == expected and config.prefix_sharing


@pytest.mark.parametrize("value, message", [("0", "at least 1"), ("big", "a number or 'auto'")])
def test_a_bad_batch_size_is_a_user_error(value, message):
    with pytest.raises(UserError, match=message):
        parse_args(["--checkpoint", "c", "--task", "t", "--batch-size", value])


def test_no_prefix_sharing_flag():
    assert not parse_args(["--checkpoint", "c", "--task", "t", "--no-prefix-sharing"]).prefix_sharing
