"""A tiny copy of InternVL's evaluation data tree (``InternVL/internvl_chat``), for layout tests.

Every path below is written out from InternVL's own sources, NOT from our presets' declarations, so that
loading a preset from this tree checks the declaration against InternVL: the ``ds_collections`` of its
``eval/vqa/evaluate_vqa.py``, ``eval/mmbench/evaluate_mmbench.py``, ``eval/scienceqa/evaluate_scienceqa.py``,
``eval/seed/evaluate_seed.py``, ``eval/pope/evaluate_pope.py``, ``eval/caption/evaluate_caption.py``, the
paths of ``eval/mme/eval.py`` (question lists in ``eval/mme/Your_Results``, images under
``data/mme/MME_Benchmark_release_version/<subtask>/``) and the directory trees of its ``eval/*/README.md``
(symlinked COCO folders included). Image paths inside the JSONL files are relative to ``internvl_chat``
(InternVL's scripts open them from there), those of SEED relative to ``data/SEED`` and those of POPE
relative to ``data/pope/val2014``, as the scripts join them.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

SHORT = "Answer the question using a single word or phrase."

# task -> (question/data file, annotation file or None): InternVL's ds_collections, verbatim paths.
VQA_FILES = {
    "textvqa_val": ("data/textvqa/textvqa_val.jsonl", "data/textvqa/textvqa_val_annotations.json"),
    "vqav2_val": ("data/vqav2/vqav2_val.jsonl", "data/vqav2/v2_mscoco_val2014_annotations.json"),
    "okvqa_val": ("data/okvqa/okvqa_val.jsonl", "data/okvqa/mscoco_val2014_annotations.json"),
    "vizwiz_val": ("data/vizwiz/vizwiz_val.jsonl", "data/vizwiz/vizwiz_val_annotations.json"),
    "docvqa_val": ("data/docvqa/val.jsonl", "data/docvqa/val/val_v1.0.json"),
    "infovqa_val": ("data/infographicsvqa/val.jsonl", "data/infographicsvqa/infographicsVQA_val_v1.0_withQT.json"),
    "chartqa_test_human": ("data/chartqa/test_human.jsonl", None),
    "chartqa_test_augmented": ("data/chartqa/test_augmented.jsonl", None),
    "ai2diagram_test": ("data/ai2diagram/test_vlmevalkit.jsonl", None),
    "gqa_testdev": ("data/gqa/llava_gqa_testdev_balanced_qwen_format.jsonl", "data/gqa/testdev_balanced_questions.json"),
}
# task -> image path inside its JSONL (relative to internvl_chat), {n} the item number.
VQA_IMAGES = {
    "textvqa_val": "data/textvqa/train_images/{n:016x}.jpg",
    "vqav2_val": "data/vqav2/val2014/COCO_val2014_{n:012d}.jpg",        # val2014 -> ../coco/val2014
    "okvqa_val": "data/okvqa/val2014/COCO_val2014_{n:012d}.jpg",        # val2014 -> ../coco/val2014
    "vizwiz_val": "data/vizwiz/val/VizWiz_val_{n:08d}.jpg",
    "docvqa_val": "data/docvqa/val/documents/doc{n}_1.png",
    "infovqa_val": "data/infographicsvqa/infographicsvqa_images/{n}.jpeg",
    "chartqa_test_human": "data/chartqa/ChartQA Dataset/test/png/h{n}.png",
    "chartqa_test_augmented": "data/chartqa/ChartQA Dataset/test/png/a{n}.png",
    "ai2diagram_test": "data/ai2diagram/AI2D_TEST/{n}.png",
    "gqa_testdev": "data/gqa/images/n{n}.jpg",
}
MMBENCH_FILES = {
    "mmbench_dev_en": "data/mmbench/mmbench_dev_en_20231003.tsv",
    "mmbench_dev_cn": "data/mmbench/mmbench_dev_cn_20231003.tsv",
    "mmbench_test_en": "data/mmbench/mmbench_test_en_20231003.tsv",
    "mmbench_test_cn": "data/mmbench/mmbench_test_cn_20231003.tsv",
    "mmbench_dev_20230712": "data/mmbench/mmbench_dev_20230712.tsv",
    "ccbench_dev_cn": "data/mmbench/CCBench_legacy.tsv",
}
ITEMS_PER_FILE = 2
MME_SUBTASKS = ("existence", "OCR", "code_reasoning")
POPE_CATEGORIES = ("adversarial", "popular", "random")
CAPTION_FILES = {
    "coco_karpathy_test": "data/coco/annotations/coco_karpathy_test.json",
    "flickr30k_test": "data/flickr30k/flickr30k_test_karpathy.json",
    "nocaps_val": "data/nocaps/nocaps_val_4500_captions.json",
}

# Items each preset reads from the tree below.
EXPECTED_ITEMS = {
    **{task: ITEMS_PER_FILE for task in VQA_FILES},
    **{task: ITEMS_PER_FILE for task in MMBENCH_FILES},
    "mmbench_dev_en_circular": 2 * ITEMS_PER_FILE,       # two options per question: two rotations each
    "mmbench_dev_cn_circular": 2 * ITEMS_PER_FILE,
    "scienceqa_test": ITEMS_PER_FILE,
    "seed_image": ITEMS_PER_FILE,
    "pope": len(POPE_CATEGORIES) * ITEMS_PER_FILE,
    "mme": len(MME_SUBTASKS) * 2 * ITEMS_PER_FILE,      # two questions per image
    **{task: ITEMS_PER_FILE for task in CAPTION_FILES},
}


def picture(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24 + seed % 5 * 4, 20), (seed * 37 % 256, 90, 200)).save(path, format="PNG")


def png_base64(seed: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 16 + seed), (200, seed * 50 % 256, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_json(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _write_vqa(chat: Path) -> None:
    for task, (data, annotation) in VQA_FILES.items():
        rows = []
        for n in range(1, ITEMS_PER_FILE + 1):
            image = VQA_IMAGES[task].format(n=n)
            picture(chat / image, n)
            rows.append({"question_id": n, "image": image, "question": f"what is shown {n} ?", "answer": f"a{n}"})
        write_jsonl(chat / data, rows)
        if annotation is None:
            continue
        if task in ("docvqa_val", "infovqa_val"):
            document: Any = {"dataset_name": task, "data": [
                {"questionId": row["question_id"], "question": row["question"], "answers": [row["answer"]]}
                for row in rows]}
        elif task == "gqa_testdev":
            document = {str(row["question_id"]): {"answer": row["answer"]} for row in rows}
        else:
            document = {"annotations": [{"question_id": row["question_id"],
                                         "answers": [{"answer": row["answer"], "answer_id": k} for k in range(10)]}
                                        for row in rows]}
        write_json(chat / annotation, document)


def _write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_mmbench(chat: Path) -> None:
    for task, path in MMBENCH_FILES.items():
        has_answer = "_test_" not in task
        header = ["index", "question", "hint", "A", "B", *(["answer"] if has_answer else []),
                  "category", "l2-category", "image"]
        rows = [[n, f"question {n} ?", "", "left", "right", *(["A"] if has_answer else []), "cat", "l2",
                 png_base64(n)] for n in range(ITEMS_PER_FILE)]
        _write_tsv(chat / path, header, rows)


def _write_multiple_choice(chat: Path) -> None:
    rows = []
    for n in range(ITEMS_PER_FILE):
        image = f"data/scienceqa/images/test/{n}/image.png"
        picture(chat / image, n)
        rows.append({"image": image, "question": "which ?", "choices": ["x", "y"], "answer": n % 2, "hint": ""})
    write_jsonl(chat / "data/scienceqa/scienceqa_test_img.jsonl", rows)
    seed_rows = []
    for n in range(ITEMS_PER_FILE):
        picture(chat / f"data/SEED/SEED-Bench-image/{n}.jpg", n)
        seed_rows.append({"question_id": n, "image": f"SEED-Bench-image/{n}.jpg",
                          "text": "how many ?\nA. 1\nB. 2\nAnswer with the option's letter from the given choices "
                                  "directly.", "answer": "A"})
    write_jsonl(chat / "data/SEED/seed.jsonl", seed_rows)


def _write_pope(chat: Path) -> None:
    questions = []
    for category in POPE_CATEGORIES:
        labels = []
        for position in range(ITEMS_PER_FILE):
            image = f"COCO_val2014_{len(questions):012d}.jpg"
            picture(chat / "data/coco/val2014" / image, len(questions))
            questions.append({"question_id": len(questions) + 1, "image": image,
                              "text": f"Is there a dog in the image?\n{SHORT}", "category": category})
            labels.append({"question_id": position + 1, "image": image, "text": "Is there a dog in the image?",
                           "label": ("yes", "no")[position % 2]})
        write_jsonl(chat / f"data/pope/coco/coco_pope_{category}.json", labels)
    write_jsonl(chat / "data/pope/llava_pope_test.jsonl", questions)


def _write_mme(chat: Path) -> None:
    lists = chat / "eval/mme/Your_Results"
    lists.mkdir(parents=True, exist_ok=True)
    for subtask in MME_SUBTASKS:
        lines = []
        for n in range(ITEMS_PER_FILE):
            image = f"{n}.jpg"
            picture(chat / "data/mme/MME_Benchmark_release_version" / subtask / image, n)
            lines += [f"{image}\tIs there a cat? Please answer yes or no.\tYes",
                      f"{image}\tIs there a dog? Please answer yes or no.\tNo"]
        (lists / f"{subtask}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_captions(chat: Path) -> None:
    karpathy, references = [], []
    for n in range(1, ITEMS_PER_FILE + 1):
        image = f"val2014/COCO_val2014_{n:012d}.jpg"              # under data/coco (the task's root)
        picture(chat / "data/coco" / image, n)
        karpathy.append({"image": image, "caption": [f"a picture {n}"]})
        references.append({"image_id": n, "caption": f"a picture {n}", "id": n})
    write_json(chat / CAPTION_FILES["coco_karpathy_test"], karpathy)
    write_json(chat / "data/coco/annotations/coco_karpathy_test_gt.json",
               {"images": [{"id": n} for n in range(1, ITEMS_PER_FILE + 1)], "annotations": references})
    for task, folder, name in (("flickr30k_test", "data/flickr30k", "Images/{n}.jpg"),
                               ("nocaps_val", "data/nocaps/images", "{n:016x}.jpg")):
        images, annotations = [], []
        for n in range(ITEMS_PER_FILE):
            file_name = name.format(n=n)
            picture(chat / folder / file_name, n)
            images.append({"id": n, "file_name": file_name})
            annotations.append({"image_id": n, "id": n, "caption": f"a photo {n}"})
        write_json(chat / CAPTION_FILES[task], {"images": images, "annotations": annotations})


def build_internvl_chat(root: Path) -> Path:
    """InternVL's ``internvl_chat`` folder with a few items for every preset; returns it. COCO's val2014
    is linked into data/vqav2, data/okvqa and data/pope as InternVL's READMEs do (relative symlinks)."""
    chat = root / "internvl_chat"
    (chat / "data/coco/val2014").mkdir(parents=True, exist_ok=True)
    for folder in ("vqav2", "okvqa", "pope"):
        (chat / "data" / folder).mkdir(parents=True, exist_ok=True)
        os.symlink("../coco/val2014", chat / "data" / folder / "val2014")
    _write_vqa(chat)
    _write_mmbench(chat)
    _write_multiple_choice(chat)
    _write_pope(chat)
    _write_mme(chat)
    _write_captions(chat)
    return chat
