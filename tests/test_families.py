"""Every transformers image-text family of the table gives what plain transformers gives, token for token.

For each family (`launcher.tiny_families.FAMILIES`) a tiny random checkpoint is built once per session, and
the reference is plain transformers, one item at a time: the family's processor,
`processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)` with
the item's images as content entries (PaliGemma, which has no chat template: `processor(text=prompt,
images=...)` as its model card does), then `model.generate(**inputs)`, greedy, float32. The processor comes
from `AutoProcessor` wherever transformers can build it here; the families whose processor owns a video
processor (Qwen2/2.5/3-VL, LLaVA-OneVision, SmolVLM, InternVL, GLM-4.1V) cannot be built by `AutoProcessor`
without torchvision, and come from `launcher.adapters.load_processor`: the family's own processor class with
the video part left out (checked against `AutoProcessor` where both work, below).

Configurations (CI has two cores, so not the full product): in process, every family exactly as a rank with
`--num-workers 0` runs it (one collate and one generate per batch of 3, fast decode and `generate`), chunks
joined as workers prepare them; and one real launcher run per family at batch 3: `torchrun` with 2 ranks and
3 preprocessing workers for the families with their own padded layouts, one process without workers for the
others (`TWO_RANKS_THREE_WORKERS`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

from eval_scripts.base import Item
from launcher.adapters import FAST_DECODE_PROVEN, ModelInputs, load_processor
from launcher.generation import GenerationSettings
from launcher.images import open_image
from launcher.loading import load_adapter
from launcher.tiny_families import FAMILIES, build_family
from tests.inputs import make_args, noise_image
from tests.runs import explain, launch, manifest, predictions, torchrun

pytestmark = pytest.mark.timeout(300)

TESTED = [name for name, family in FAMILIES.items() if not family.needs_torchvision]
MAX_NEW_TOKENS = 8
TASK = "vqa"
SUFFIX = "Answer the question using a single word or phrase."   # the generic vqa task's prompt suffix
# Families that decode with generate, and why (their capability record must say so).
GENERATE_ONLY = {"gemma3": "sliding", "aya_vision": "sliding", "mllama": "cross-attention"}
# InternVL -hf: its processor tiles by default (crop_to_patches, the image processor's max_patches = 4);
# the launcher tiles with InternVL's flags, so the runs pass them.
FLAGS = {"internvl": ["--dynamic", "--max-num", "4"]}

# (width, height) per item; item 3 has two images; item 5's JPEG carries an EXIF rotation.
IMAGE_SIZES = [(40, 30), (64, 64), (20, 50), (90, 40), (56, 56), (33, 70), (80, 20)]
QUESTIONS = ["what colour is it ?", "how many shapes are there in the picture ?", "is it big ?",
             "describe the two pictures .", "where is the circle ?", "which shape is on the left ?",
             "what is written ?"]


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Builds a family's tiny checkpoint on first use, once per session."""
    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_family(name, root / name, seed=0)
        return built[name]

    return get


@pytest.fixture(scope="session")
def family_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with an InternVL-style JSONL of 7 items over 8 images of different sizes."""
    root = tmp_path_factory.mktemp("family_data")
    (root / "images").mkdir()
    rows = []
    for index, ((width, height), question) in enumerate(zip(IMAGE_SIZES, QUESTIONS)):
        image = noise_image(width, height, seed=index + 1)
        if index == 5:      # stored sideways with an EXIF orientation tag: transformers turns it upright
            exif = image.getexif()
            exif[0x0112] = 6
            image.save(root / "images" / f"{index}.jpg", exif=exif, quality=95)
            paths = f"images/{index}.jpg"
        else:
            image.save(root / "images" / f"{index}.png")
            paths = f"images/{index}.png"
        rows.append({"question_id": index, "image": paths, "question": question, "answer": "red"})
    noise_image(70, 35, seed=99).save(root / "images" / "extra.png")
    rows[3]["image"] = [rows[3]["image"], "images/extra.png"]
    (root / "vqa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def item_images(data: Path) -> list[list[Path]]:
    rows = [json.loads(line) for line in (data / "vqa.jsonl").read_text().splitlines()]
    return [[data / path for path in (row["image"] if isinstance(row["image"], list) else [row["image"]])]
            for row in rows]


def prompt_of(question: str) -> str:
    return f"{question} {SUFFIX}"


def plain_processor(name: str, checkpoint: Path, tokenizer) -> object:
    """The family's processor as transformers builds it (AutoProcessor), else without its video part."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(checkpoint)
    except (ImportError, ValueError):         # a video processor needs torchvision (see module docstring)
        from transformers import AutoConfig

        return load_processor(str(checkpoint), tokenizer, AutoConfig.from_pretrained(checkpoint))


def plain_inputs(name: str, processor, prompt: str, paths: list[Path]) -> dict:
    """Plain transformers' inputs for one item (module docstring)."""
    if name == "paligemma":
        from transformers.image_utils import load_image

        images = [load_image(str(path)) for path in paths]
        return dict(processor(text=prompt, images=images[0] if len(images) == 1 else [images], return_tensors="pt"))
    content = [{"type": "image", "path": str(path)} for path in paths] + [{"type": "text", "text": prompt}]
    return dict(processor.apply_chat_template([{"role": "user", "content": content}], tokenize=True,
                                              return_dict=True, add_generation_prompt=True, return_tensors="pt"))


_REFERENCES: dict[str, list[str]] = {}


def plain_transformers(name: str, checkpoint: Path, data: Path) -> list[str]:
    """The reference answers of every item, one item per generate call (cached per family)."""
    if name not in _REFERENCES:
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        processor = plain_processor(name, checkpoint, tokenizer)
        model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
        answers = []
        for question, paths in zip(QUESTIONS, item_images(data)):
            inputs = plain_inputs(name, processor, prompt_of(question), paths)
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
            answers.append(processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:],
                                                      skip_special_tokens=True).strip())
        assert len(set(answers)) > 3, f"{name}: the tiny model answers alike to different items: {answers}"
        _REFERENCES[name] = answers
    return _REFERENCES[name]


def adapter_args(name: str, checkpoint: Path):
    return make_args(checkpoint, dynamic=True, max_num=4) if name == "internvl" else make_args(checkpoint)


def collate(adapter, data: Path, indices) -> ModelInputs:
    items = [Item(id=str(i), question=QUESTIONS[i]) for i in indices]
    images = [[open_image(path, str(i)) for path in item_images(data)[i]] for i in indices]
    return adapter.collate(items, [prompt_of(QUESTIONS[i]) for i in indices], images)


def assert_same_tensors(ours: dict, theirs: dict, where: str) -> None:
    assert set(ours) - {"labels"} == set(theirs) - {"labels"}, where
    for key, value in theirs.items():
        if key == "labels":
            continue
        assert ours[key].shape == value.shape, f"{where}: {key} {tuple(ours[key].shape)} != {tuple(value.shape)}"
        if value.is_floating_point():
            assert float((ours[key].float() - value.float()).abs().max()) < 1e-5, f"{where}: {key}"
        else:
            assert torch.equal(ours[key], value), f"{where}: {key}"


# ------------------------------------------------------------------------------------------------
# In process: prompts, joins, batched decoding


@pytest.mark.parametrize("name", TESTED)
def test_family_in_process_equals_plain_transformers(name, family_checkpoint, family_data):
    checkpoint = family_checkpoint(name)
    expected = plain_transformers(name, checkpoint, family_data)
    adapter = load_adapter(adapter_args(name, checkpoint))
    record = adapter.describe()["capabilities"]

    # Prompts and tensors as apply_chat_template(tokenize=True) builds them, item by item (no second BOS,
    # images per item, EXIF orientation applied, only inputs that generate takes).
    for index, paths in enumerate(item_images(family_data)):
        theirs = plain_inputs(name, adapter.processor, prompt_of(QUESTIONS[index]), paths)
        assert_same_tensors(collate(adapter, family_data, [index]).to(torch.device("cpu")), theirs,
                            f"{name} item {index}")

    # Chunks collated apart and joined are one collate of the whole batch (every padded layout).
    whole = collate(adapter, family_data, range(7))
    joined = ModelInputs.join([collate(adapter, family_data, chunk) for chunk in ([0], [1, 2], [3], [4, 5, 6])])
    assert joined.tensors.keys() == whole.tensors.keys()
    for key, tensor in whole.tensors.items():
        assert torch.equal(joined.tensors[key], tensor), f"{name}: joined {key} differs from one collate"
    assert record["joins_chunks"], record

    # Batches of 3, both decoders, equal the reference item by item.
    for decode in ("auto", "generate"):
        settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, decode=decode)
        answers = []
        for start in range(0, 7, 3):
            answers += adapter.generate(collate(adapter, family_data, range(start, min(start + 3, 7))), settings)
        assert answers == expected, f"{name} --decode {decode}"

    if name in GENERATE_ONLY:
        assert record["fast_decode"].startswith("generate:") and GENERATE_ONLY[name] in record["fast_decode"]
    else:
        assert name in FAST_DECODE_PROVEN and record["fast_decode"] == "launcher.fast_decode", record


def test_proven_families_are_the_tested_ones():
    """FAST_DECODE_PROVEN lists exactly the families whose fast path the test above compares."""
    assert FAST_DECODE_PROVEN == {FAMILIES[name].model_type for name in TESTED if name not in GENERATE_ONLY}


@pytest.mark.parametrize("name", ["llava", "idefics3", "gemma3", "paligemma", "mllama", "aya_vision"])
def test_processor_built_without_video_matches_auto_processor(name, family_checkpoint, family_data):
    """Where AutoProcessor works without torchvision, the construction the video families need gives the
    same inputs: leaving the video part out changes nothing else."""
    from transformers import AutoProcessor, AutoTokenizer

    from launcher.adapters import build_processor_without_video

    checkpoint = family_checkpoint(name)
    auto = AutoProcessor.from_pretrained(checkpoint)
    ours = build_processor_without_video(str(checkpoint), AutoTokenizer.from_pretrained(checkpoint),
                                         FAMILIES[name].model_type)
    assert type(ours).__mro__[1] is type(auto)
    for index, paths in enumerate(item_images(family_data)[:4]):
        prompt = prompt_of(QUESTIONS[index])
        assert_same_tensors(plain_inputs(name, ours, prompt, paths), plain_inputs(name, auto, prompt, paths),
                            f"{name} item {index}")


# ------------------------------------------------------------------------------------------------
# Real launcher runs


def run_args(name: str, checkpoint: Path, data: Path, out_dir: Path, workers: int) -> list:
    return ["--checkpoint", checkpoint, "--task", TASK, "--data", data / "vqa.jsonl", "--data-root", data,
            "--metric", "exact_match", "--out-dir", out_dir, "--batch-size", "3", "--num-workers", str(workers),
            "--max-new-tokens", str(MAX_NEW_TOKENS), *FLAGS.get(name, [])]


def check_run(name: str, out_dir: Path, expected: list[str], processes: int) -> None:
    rows = predictions(out_dir, TASK)
    assert [row["prediction"] for row in rows] == expected, name
    run = manifest(out_dir)
    assert run["status"] == "done"
    assert len(run["processes"]) == processes
    record = run["processes"][0]["model"]["capabilities"]
    if name in GENERATE_ONLY:
        assert record["fast_decode"].startswith("generate:"), record
    else:
        assert record["fast_decode"] == "launcher.fast_decode", record
    assert record["joins_chunks"] is True


# One real run per family (CI has two cores: not the full product). The families whose batches have their own
# padded layouts run with 2 ranks and 3 workers (chunks joined); the others as one process without workers.
TWO_RANKS_THREE_WORKERS = {"qwen2_vl", "llava_next", "llava_onevision", "idefics3", "smolvlm", "mllama", "gemma3"}


@pytest.mark.slow
@pytest.mark.parametrize("name", TESTED)
def test_family_launcher_run_equals_plain_transformers(name, family_checkpoint, family_data, tmp_path):
    checkpoint = family_checkpoint(name)
    expected = plain_transformers(name, checkpoint, family_data)
    if name in TWO_RANKS_THREE_WORKERS:
        result, processes = torchrun(2, run_args(name, checkpoint, family_data, tmp_path, workers=3)), 2
    else:
        result, processes = launch(run_args(name, checkpoint, family_data, tmp_path, workers=0)), 1
    assert result.returncode == 0, explain(result)
    check_run(name, tmp_path, expected, processes=processes)


# ------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("workers", [0, 2])
def test_a_processor_that_needs_torchvision_is_refused_naming_it(workers, family_checkpoint, family_data,
                                                                 tmp_path):
    pytest.importorskip("PIL")
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        pytest.skip("torchvision is installed here: Mistral 3's processor builds")
    checkpoint = family_checkpoint("mistral3")
    result = launch(run_args("mistral3", checkpoint, family_data, tmp_path, workers=workers))
    assert result.returncode == 2, explain(result)
    assert "PixtralProcessor needs the package 'torchvision'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_packages_are_read_from_transformers_messages():
    from launcher.adapters import missing_package

    assert missing_package(ImportError("PixtralProcessor requires the Torchvision library but it was not found")) \
        == "torchvision"
    assert missing_package(ImportError("Package `num2words` is required to run SmolVLM processor.")) == "num2words"
    assert missing_package(ModuleNotFoundError("No module named 'torchvision.transforms'")) == "torchvision"
    assert missing_package(ImportError("something else")) is None


def test_exif_rotated_image_is_turned_upright_as_transformers_does(family_checkpoint, family_data):
    """The JPEG of item 5 is stored 33x70 with orientation 6: both sides see it 70x33."""
    stored = Image.open(family_data / "images" / "5.jpg")
    assert stored.size == (33, 70)
    adapter = load_adapter(make_args(family_checkpoint("llava_onevision")))
    batch = collate(adapter, family_data, [5])
    assert batch.tensors["image_sizes"].tolist() == [[33, 70]]      # (height, width) after the rotation
