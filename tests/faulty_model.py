"""A tiny checkpoint that fails on purpose, for fault injection in real runs (tests only).

`build_faulty_checkpoint(native, out)` copies the tiny native InternVL (weights linked, not copied) and
adds remote code: `config.json`'s `auto_map` points `AutoModelForImageTextToText` at `FaultyInternVL`,
written into the folder, a subclass of transformers' `InternVLForConditionalGeneration` whose `forward`
raises when the prompt holds a marker word:

* `RAISE_WORD` -> `RuntimeError` (a bug in the model code on one batch), and
* `OOM_WORD` -> `torch.cuda.OutOfMemoryError`, raised on the CPU as CUDA would raise it, for every batch
  holding the item (so the runner's split in halves ends at that item alone).

The check runs on the prefill (the call that carries `pixel_values`), which both transformers' `generate`
and our own greedy loop (launcher/fast_decode.py) make once per batch; decode steps, whose one new token
could be anything, are never checked. Every other batch predicts exactly what the native checkpoint
predicts. The production code has no test hook: the fault lives in the model, as a real one would.
Loading it needs `--trust-remote-code`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

RAISE_WORD = "thousand"
OOM_WORD = "hundred"
MODEL_FILE = "faulty_internvl.py"

_SOURCE = '''\
"""Tiny InternVL that fails on purpose when its prompt holds a marker word (tests/faulty_model.py)."""
import torch
from transformers import InternVLForConditionalGeneration

RAISE_TOKEN_ID = {raise_id}
OOM_TOKEN_ID = {oom_id}


class FaultyInternVL(InternVLForConditionalGeneration):
    def forward(self, input_ids=None, pixel_values=None, **kwargs):
        if input_ids is not None and pixel_values is not None:   # the prefill of a batch
            if bool((input_ids == RAISE_TOKEN_ID).any()):
                raise RuntimeError("injected fault: the prompt holds the word {raise_word!r}")
            if bool((input_ids == OOM_TOKEN_ID).any()):
                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 20.00 GiB (injected: the prompt holds {oom_word!r})")
        return super().forward(input_ids=input_ids, pixel_values=pixel_values, **kwargs)
'''


def build_faulty_checkpoint(native: Path, out: Path) -> Path:
    """`native` (a `build_native_internvl` folder) plus the failing remote code above, in `out`."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    for path in Path(native).iterdir():
        if path.suffix == ".safetensors":
            (out / path.name).symlink_to(path.resolve())
        elif path.is_file():
            shutil.copy2(path, out / path.name)
    tokenizer = AutoTokenizer.from_pretrained(str(native))
    raise_id, oom_id = (tokenizer.convert_tokens_to_ids(word) for word in (RAISE_WORD, OOM_WORD))
    assert tokenizer.unk_token_id not in (raise_id, oom_id), "the marker words must be in the tiny vocabulary"
    (out / MODEL_FILE).write_text(_SOURCE.format(raise_id=raise_id, oom_id=oom_id, raise_word=RAISE_WORD,
                                                 oom_word=OOM_WORD))
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageTextToText": f"{MODEL_FILE[:-3]}.FaultyInternVL"}
    config["architectures"] = ["FaultyInternVL"]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


CORRUPT_IMAGE = "synthetic/corrupt.png"         # relative to the data root, as the synthetic task's paths
MISSING_IMAGE = "synthetic/images/no_such_image.png"


def write_corrupt_image(data_root: Path) -> Path:
    """A truncated download beside the synthetic images: its header (so the item's cost, its place in the
    batch order) is intact, decoding fails."""
    whole = next((Path(data_root) / "synthetic" / "images").iterdir()).read_bytes()
    path = Path(data_root) / CORRUPT_IMAGE
    path.write_bytes(whole[:len(whole) // 2])
    return path


def fault_data_root(root: Path, items: int, seed: int) -> Path:
    """A synthetic data root for fault tests: `items` synthetic items, plus the corrupt image beside them."""
    from eval_scripts.synthetic import generate_benchmark

    generate_benchmark(Path(root) / "synthetic", n_items=items, seed=seed, split="test")
    write_corrupt_image(root)
    return Path(root)


def bad_item_data(source: Path, kind: str, bad_index: int, out: Path, items: int = 24) -> tuple[Path, str]:
    """The first `items` rows of a synthetic data file, every question of one length (equal costs keep the
    items in file order), row `bad_index` broken as `kind` says: "missing-image", "corrupt-image" (see
    `write_corrupt_image`), "generate-raises" or "oom-at-batch-size-1". Returns the file and the bad id."""
    rows = [json.loads(line) for line in Path(source).read_text().splitlines()][:items]
    for row in rows:
        row["question"] = "what color is the shape ?"
    bad = rows[bad_index]
    if kind == "missing-image":
        bad["image"] = MISSING_IMAGE
    elif kind == "corrupt-image":
        bad["image"] = CORRUPT_IMAGE
    elif kind == "generate-raises":
        bad["question"] = f"what color is the {RAISE_WORD} ?"
    elif kind == "oom-at-batch-size-1":
        bad["question"] = f"what color is the {OOM_WORD} ?"
    else:
        raise ValueError(f"unknown kind {kind!r}")
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out, str(bad["question_id"])
