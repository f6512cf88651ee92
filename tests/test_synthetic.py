"""The synthetic shapes benchmark: generator, task, and the committed demo model that answers it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_scripts import synthetic
from eval_scripts.base import DataError, TaskInputs
from eval_scripts.registry import get_task
from eval_scripts.synthetic import (
    CHANCE, HELD_OUT_SEED, HELD_OUT_SIZE, HELD_OUT_SPLIT, PROMPT_SUFFIX, QUESTION_TYPES,
    SyntheticShapesTask, generate_benchmark, held_out_hashes, image_hash, make_item,
    normalize_answer, training_stream)

CHECKPOINT = Path(__file__).resolve().parent.parent / "demo" / "checkpoint"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_benchmark(root / "synthetic", 40, seed=HELD_OUT_SEED, split=HELD_OUT_SPLIT)
    return root


def inputs_for(root: Path, **overrides) -> TaskInputs:
    return TaskInputs(data_root=root, image_root=overrides.pop("image_root", root), **overrides)


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- the generator -------------------------------------------------------------------------------

def test_same_seed_draws_the_same_pixels_and_questions() -> None:
    for index in range(12):
        first, second = make_item(7, "train", index), make_item(7, "train", index)
        assert image_hash(first.image) == image_hash(second.image)
        assert (first.question, first.answer, first.question_type) == (
            second.question, second.answer, second.question_type)


def test_different_seeds_draw_different_images() -> None:
    hashes_a = {image_hash(make_item(1, "test", index).image) for index in range(20)}
    hashes_b = {image_hash(make_item(2, "test", index).image) for index in range(20)}
    assert not hashes_a & hashes_b


def test_generated_files_are_identical_for_the_same_seed(tmp_path: Path) -> None:
    first = generate_benchmark(tmp_path / "a" / "synthetic", 12, seed=5, split="test")
    second = generate_benchmark(tmp_path / "b" / "synthetic", 12, seed=5, split="test")
    assert first.read_text() == second.read_text()
    for row in map(json.loads, first.read_text().splitlines()):
        image_a = (tmp_path / "a" / row["image"]).read_bytes()
        image_b = (tmp_path / "b" / row["image"]).read_bytes()
        assert image_a == image_b


def test_every_question_type_appears_with_its_own_answers() -> None:
    items = [make_item(HELD_OUT_SEED, HELD_OUT_SPLIT, index) for index in range(80)]
    assert {item.question_type for item in items} == set(QUESTION_TYPES)
    for item in items:
        assert item.answer in synthetic.ANSWERS[item.question_type]


def test_chance_levels_are_uniform_guessing_over_each_types_answers() -> None:
    assert CHANCE == {"color": 1 / 6, "count": 1 / 4, "shape": 1 / 3, "position": 1 / 2}


def test_jsonl_is_internvl_format_with_paths_relative_to_the_data_root(data_root: Path) -> None:
    rows = [json.loads(line) for line in (data_root / "synthetic" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    assert [row["question_id"] for row in rows] == list(range(40))
    for row in rows:
        assert set(row) == {"question_id", "image", "question", "answer", "question_type"}
        assert not Path(row["image"]).is_absolute()
        assert (data_root / row["image"]).is_file()


def test_position_targets_sit_clearly_on_their_side() -> None:
    for index in range(3, 400, 4):
        item = make_item(HELD_OUT_SEED, HELD_OUT_SPLIT, index)
        assert item.question_type == "position"
        center_x = item.objects[0].center_x
        assert center_x <= 22 if item.answer == "left" else center_x >= 41, (index, item.objects[0])


def test_objects_never_overlap_and_stay_inside_the_image() -> None:
    for index in range(200):
        boxes = [scene_object.box for scene_object in make_item(7, "train", index).objects]
        for left, top, right, bottom in boxes:
            assert 0 <= left < right < synthetic.IMAGE_SIZE and 0 <= top < bottom < synthetic.IMAGE_SIZE
        for first in range(len(boxes)):
            for second in range(first + 1, len(boxes)):
                a, b = boxes[first], boxes[second]
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def test_the_answer_matches_the_drawn_scene() -> None:
    for index in range(200):
        item = make_item(HELD_OUT_SEED, HELD_OUT_SPLIT, index)
        if item.question_type == "count":
            assert item.answer == str(len(item.objects))
        elif item.question_type == "color":
            named = item.question.removeprefix("What color is the ").removesuffix("?")
            assert [o.color for o in item.objects if o.shape == named] == [item.answer]
        elif item.question_type == "shape":
            named = item.question.split()[4]
            assert [o.shape for o in item.objects if o.color == named] == [item.answer]


def test_training_stream_never_yields_a_held_out_image() -> None:
    held_out = held_out_hashes()
    assert len(held_out) == HELD_OUT_SIZE
    stream = training_stream(exclude=held_out)
    training = {image_hash(next(stream).image) for _ in range(2000)}
    assert not training & held_out


def test_training_stream_drops_items_whose_pixels_are_held_out() -> None:
    first_training_image = image_hash(make_item(synthetic.TRAINING_SEED, synthetic.TRAINING_SPLIT, 0).image)
    stream = training_stream(exclude=frozenset({first_training_image}))
    assert image_hash(next(stream).image) != first_training_image


def test_training_stream_refuses_the_held_out_seed() -> None:
    with pytest.raises(ValueError, match="held-out"):
        next(training_stream(seed=HELD_OUT_SEED, split=HELD_OUT_SPLIT))


def test_cli_writes_the_benchmark(tmp_path: Path) -> None:
    assert synthetic.main(["--out", str(tmp_path / "synthetic"), "--n", "8", "--seed", "3"]) == 0
    lines = (tmp_path / "synthetic" / "test.jsonl").read_text().splitlines()
    assert len(lines) == 8


# --- the task ------------------------------------------------------------------------------------

def test_task_is_registered() -> None:
    assert isinstance(get_task("synthetic_shapes"), SyntheticShapesTask)


def test_load_resolves_images_against_the_image_root(data_root: Path) -> None:
    items = SyntheticShapesTask().load(inputs_for(data_root))
    assert len(items) == 40
    assert items[0].id == "0"
    assert items[0].images[0] == (data_root / "synthetic" / "images" / "test_00000.png").resolve()
    assert items[0].fields["question_type"] == "color"
    assert all(Path(item.images[0]).is_file() for item in items)


def test_prompt_appends_the_short_answer_instruction() -> None:
    item = make_item(HELD_OUT_SEED, HELD_OUT_SPLIT, 0)
    task = SyntheticShapesTask()
    from eval_scripts.base import Item
    assert task.prompt(Item(id="0", question=item.question)) == item.question + PROMPT_SUFFIX
    assert PROMPT_SUFFIX == " Answer the question using a single word or phrase."


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"question_id": 1, "image": "x.png", "question": "q?", "answer": "red"}', "missing key 'question_type'"),
    ('{"question_id": 1, "image": 3, "question": "q?", "answer": "red", "question_type": "color"}', "'image' should be str"),
])
def test_a_bad_line_names_the_file_and_the_line(tmp_path: Path, line: str, message: str) -> None:
    good = '{"question_id": 0, "image": "a.png", "question": "q?", "answer": "red", "question_type": "color"}'
    (tmp_path / "synthetic").mkdir()
    path = write_jsonl(tmp_path / "synthetic" / "test.jsonl", [good, line])
    with pytest.raises(DataError, match=rf"test\.jsonl:2: .*{message}"):
        SyntheticShapesTask().load(inputs_for(tmp_path))
    assert path.exists()


def test_a_duplicate_question_id_is_a_data_error(tmp_path: Path) -> None:
    good = '{"question_id": 0, "image": "a.png", "question": "q?", "answer": "red", "question_type": "color"}'
    (tmp_path / "synthetic").mkdir()
    write_jsonl(tmp_path / "synthetic" / "test.jsonl", [good, good])
    with pytest.raises(DataError, match=r"test\.jsonl:2: question_id '0' appears twice"):
        SyntheticShapesTask().load(inputs_for(tmp_path))


def test_an_image_outside_the_root_is_refused_unless_allowed(tmp_path: Path) -> None:
    line = '{"question_id": 0, "image": "../x.png", "question": "q?", "answer": "red", "question_type": "color"}'
    (tmp_path / "root" / "synthetic").mkdir(parents=True)
    write_jsonl(tmp_path / "root" / "synthetic" / "test.jsonl", [line])
    with pytest.raises(DataError, match="outside the image root"):
        SyntheticShapesTask().load(inputs_for(tmp_path / "root"))
    items = SyntheticShapesTask().load(inputs_for(tmp_path / "root", allow_outside_root=True))
    assert items[0].images[0] == (tmp_path / "x.png").resolve()


def test_a_missing_data_file_says_how_to_generate_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="python -m eval_scripts.synthetic"):
        SyntheticShapesTask().load(inputs_for(tmp_path))


def test_normalization_ignores_case_spaces_and_a_trailing_period() -> None:
    assert normalize_answer(" Red. ") == "red"
    assert normalize_answer("LEFT") == "left"
    assert normalize_answer("3.") == "3"
    assert normalize_answer("red circle") == "red circle"


def test_score_by_hand_overall_and_per_type() -> None:
    rows = [
        {"id": "0", "prediction": "Red.", "answer": "red", "question_type": "color"},
        {"id": "1", "prediction": "blue", "answer": "red", "question_type": "color"},
        {"id": "2", "prediction": "3", "answer": "3", "question_type": "count"},
        {"id": "3", "prediction": " square", "answer": "square", "question_type": "shape"},
        {"id": "4", "prediction": "left", "answer": "right", "question_type": "position"},
        # As the runner writes an item it could not run (--on-bad-item skip): wrong, and counted.
        {"id": "5", "prediction": "", "answer": "left", "question_type": "position", "skipped": "bad image"},
    ]
    score = SyntheticShapesTask().score(rows)
    assert (score.metric, score.scale, score.n, score.n_skipped) == ("exact_match", "percent", 6, 1)
    assert score.score == pytest.approx(50.0)
    assert dict(score.metrics) == pytest.approx({
        "exact_match": 50.0, "exact_match/color": 50.0, "exact_match/count": 100.0,
        "exact_match/shape": 100.0, "exact_match/position": 0.0})


def test_score_works_from_prediction_rows_alone(data_root: Path) -> None:
    task = SyntheticShapesTask()
    items = task.load(inputs_for(data_root))
    rows = [json.loads(json.dumps(task.prediction_row(item, item.answer))) for item in items]
    assert all("question_type" in row for row in rows)
    score = task.score(rows)
    assert score.score == 100.0
    assert set(score.metrics) == {"exact_match"} | {f"exact_match/{kind}" for kind in QUESTION_TYPES}


# --- the committed demo model --------------------------------------------------------------------

def test_checkpoint_weights_are_well_under_ten_megabytes() -> None:
    weights = list(CHECKPOINT.glob("*.safetensors"))
    assert weights, f"no safetensors in {CHECKPOINT}"
    assert sum(path.stat().st_size for path in weights) < 10 * 1024 * 1024


@pytest.fixture(scope="module")
def demo_model():
    """The committed checkpoint through plain transformers (no launcher code)."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT)
    try:
        image_processor = AutoImageProcessor.from_pretrained(CHECKPOINT)
    except ImportError:   # transformers 5.17 without torchvision: the PIL class, by name
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
        image_processor = GotOcr2ImageProcessorPil.from_pretrained(CHECKPOINT)
    model = AutoModelForImageTextToText.from_pretrained(CHECKPOINT).eval()
    return model, tokenizer, image_processor


def plain_transformers_inputs(model, tokenizer, image_processor, prompts, images) -> dict:
    """Chat template with one image part, the image placeholder expanded as InternVLProcessor does
    (`<img>` + `<IMG_CONTEXT>` x image_seq_length + `</img>`), left padding, pixel values."""
    texts = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
            tokenize=False, add_generation_prompt=True)
        texts.append(text.replace("<IMG_CONTEXT>",
                                  "<img>" + "<IMG_CONTEXT>" * model.config.image_seq_length + "</img>"))
    tokenizer.padding_side = "left"
    inputs = dict(tokenizer(texts, return_tensors="pt", padding=True))
    inputs["pixel_values"] = image_processor(list(images), return_tensors="pt")["pixel_values"]
    return inputs


def test_checkpoint_answers_held_out_items_through_plain_transformers(demo_model) -> None:
    import torch

    model, tokenizer, image_processor = demo_model
    items = [make_item(HELD_OUT_SEED, HELD_OUT_SPLIT, index) for index in range(24)]
    inputs = plain_transformers_inputs(model, tokenizer, image_processor,
                                       [item.question + PROMPT_SUFFIX for item in items],
                                       [item.image for item in items])
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    predictions = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    correct = sum(normalize_answer(prediction) == item.answer for prediction, item in zip(predictions, items))
    assert correct >= 20, list(zip(predictions, [item.answer for item in items]))


def test_training_inputs_are_exactly_what_the_evaluation_adapter_builds(demo_model) -> None:
    import torch

    from demo.train_demo_model import Batcher
    from launcher.adapters import NativeImageTextAdapter, load_processor

    model, tokenizer, _ = demo_model
    items = [make_item(HELD_OUT_SEED, HELD_OUT_SPLIT, index) for index in range(8)]  # mixed lengths
    adapter = NativeImageTextAdapter(model, load_processor(str(CHECKPOINT), tokenizer, model.config))
    task = SyntheticShapesTask()
    from eval_scripts.base import Item
    batch = adapter.collate(
        [Item(id=str(i), question=item.question) for i, item in enumerate(items)],
        [task.prompt(Item(id=str(i), question=item.question)) for i, item in enumerate(items)],
        [[item.image] for item in items])
    evaluation = batch.to(torch.device("cpu"), torch.float32)   # what generate feeds the model
    training = Batcher(CHECKPOINT).batch(items, with_answer=False)
    assert training["input_ids"].tolist() == evaluation["input_ids"].tolist()
    assert training["attention_mask"].tolist() == evaluation["attention_mask"].tolist()
    # Bit for bit with the PIL image processor; the torchvision one folds the rescale into mean/std, so
    # its float path and our normalisation of its bytes differ by float rounding (about 5e-7).
    torch.testing.assert_close(evaluation["pixel_values"], training["pixel_values"], rtol=0, atol=1e-5)
