"""`python -m launcher report`: the table (terminal, CSV, Markdown) and the self-contained HTML page.

Most tests read the results of the shared sweep (conftest.py `interrupted_sweep`: four checkpoints x two
tasks) and check every number shown against the runs' metrics.json files. One builds a results folder by
hand with the real task scorers (MME, POPE, MMBench), settings that differ between runs and a failed run.
The page is opened in headless Chromium when it is installed (Debian: `apt-get install chromium`).
"""
from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from eval_scripts.registry import get_task
from launcher.report import collect, main, settings_differences, step_of, write_report
from tests.runs import ROOT, child_env
from tests.sweeps import TASKS


@pytest.mark.parametrize("name, step, series", [
    ("checkpoint-1000", 1000, "checkpoint-*"),
    ("step_2000", 2000, "step_*"),
    ("iter_0003000", 3000, "iter_*"),
    ("runs/a/global_step500", 500, "runs/a/global_step*"),
    ("ckpt-7-final", 7, "ckpt-*-final"),
    ("InternVL3-8B", None, "InternVL3-8B"),           # a size is not a step
    ("qwen2.5-vl-7b", None, "qwen2.5-vl-7b"),
    ("unit-step", None, "unit-step"),
    ("split/checkpoint-10/epoch-1", None, "split/checkpoint-10/epoch-1"),  # only the last folder's name counts
])
def test_training_steps_are_read_from_run_names(name, step, series):
    assert step_of(name) == (step, series)


# The first test to use the shared sweep builds it (about a minute alone on 2 cores, five on a busy machine).
SWEEP_TIMEOUT = pytest.mark.timeout(900)

# ------------------------------------------------------------------------------------------------ HTML parsing

class _Page(HTMLParser):
    """The parts of the page the tests check: summary rows, sub-metric tables, images, external references."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.summary: dict[str, dict[str, dict[str, str]]] = {}    # model -> task -> {"text", "class", "title"}
        self.submetrics: dict[str, dict[str, list[str]]] = {}      # task -> metric key -> the runs' values
        self.external: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._model: str | None = None
        self._key: str | None = None
        self._cell: dict[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for key in ("src", "href"):
            if attributes.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attributes[key])
        if tag == "img":
            self.images.append(attributes)
        elif tag == "table":
            self._table = "summary" if attributes.get("id") == "summary" else \
                f"sub:{attributes['data-task']}" if "submetrics" in attributes.get("class", "") else "other"
        elif tag == "tr":
            self._row = []
            self._model = attributes.get("data-model")
            self._key = attributes.get("data-key")
        elif tag in ("td", "th"):
            self._cell = {"text": "", "class": attributes.get("class", ""), "title": attributes.get("title", ""),
                          "task": attributes.get("data-task", "")}

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(self._cell["text"].strip())
            if self._table == "summary" and self._model and self._cell["task"]:
                self.summary.setdefault(self._model, {})[self._cell["task"]] = self._cell
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._table and self._table.startswith("sub:") and self._key:
                self.submetrics.setdefault(self._table[4:], {})[self._key] = self._row[2:]
            self._row = None
        elif tag == "table":
            self._table = None


def parse_page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def submetric_table(page: _Page, task: str) -> dict[str, list[str]]:
    """'group/metric' (or a plain metric) -> the values shown, one per run."""
    return page.submetrics[task]


def decoded_png(source: str) -> Image.Image:
    assert source.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
    image.load()
    assert image.format == "PNG"
    return image


# ------------------------------------------------------------------------------------------------ the sweep's report

@pytest.fixture(scope="module")
def sweep_report(interrupted_sweep, tmp_path_factory):
    """The report of the shared sweep, written outside its folder: (runs, terminal table, html, csv, md)."""
    assert interrupted_sweep.second.returncode == 0, interrupted_sweep.second.stdout[-3000:]
    out = tmp_path_factory.mktemp("report") / "report.html"
    runs, terminal, paths = write_report(interrupted_sweep.out_dir, out)
    return runs, terminal, paths


def _metrics(interrupted_sweep) -> dict[tuple[str, str], dict]:
    return {(name, task): json.loads((interrupted_sweep.out_dir / name / task / "metrics.json").read_text())
            for name in interrupted_sweep.names for task in TASKS}


@SWEEP_TIMEOUT
def test_the_csv_holds_every_pair_as_its_metrics_file_says(interrupted_sweep, sweep_report):
    _, _, (_, csv_path, _) = sweep_report
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    expected = _metrics(interrupted_sweep)
    assert {(row["model"], row["task"]) for row in rows} == set(expected)
    for row in rows:
        metrics = expected[(row["model"], row["task"])]
        assert float(row["score"]) == metrics["score"]
        assert (int(row["n"]), int(row["n_skipped"]), row["metric"], row["scale"]) == \
            (metrics["n"], metrics["n_skipped"], metrics["metric"], metrics["scale"])
        assert row["step"] == ("" if row["model"] == "tiny-random" else row["model"].split("-")[1])
        assert row["status"] == "done" and row["settings_differ"] == ""
        run = json.loads((interrupted_sweep.out_dir / row["model"] / "run.json").read_text())
        if row["task"] in run["tasks"]:   # the date is the run's, from the run.json that ran the task
            assert row["date"] == run["updated"][:10] + " " + run["updated"][11:16]


@SWEEP_TIMEOUT
def test_terminal_and_markdown_tables_show_models_by_tasks(interrupted_sweep, sweep_report):
    _, terminal, (_, _, markdown_path) = sweep_report
    expected = _metrics(interrupted_sweep)
    markdown = markdown_path.read_text().splitlines()
    assert markdown[0].startswith("| model | synthetic_shapes<br>exact_match, percent | pope<br>f1, percent |")
    for name in interrupted_sweep.names:
        cells = [f"{expected[(name, task)]['score']:.2f} (n={expected[(name, task)]['n']})" for task in TASKS]
        terminal_row = next(line for line in terminal.splitlines() if line.startswith(name + " "))
        assert all(cell in terminal_row for cell in cells) and terminal_row.rstrip().endswith("done")
        markdown_row = next(line for line in markdown if line.startswith(f"| {name} |"))
        assert markdown_row.split(" | ")[1:3] == cells
    # Step order, the unstepped model last.
    order = [line.split()[0] for line in terminal.splitlines()[3:3 + len(interrupted_sweep.names)]]
    assert order == ["checkpoint-1000", "checkpoint-2000", "checkpoint-3000", "tiny-random"]


@SWEEP_TIMEOUT
def test_the_page_has_the_table_the_sub_metrics_and_only_embedded_images(interrupted_sweep, sweep_report):
    _, _, (html_path, _, _) = sweep_report
    text = html_path.read_text()
    page = parse_page(text)
    expected = _metrics(interrupted_sweep)
    assert set(page.summary) == set(interrupted_sweep.names)
    for (name, task), metrics in expected.items():
        cell = page.summary[name][task]
        assert cell["text"].startswith(f"{metrics['score']:.2f}n={metrics['n']}")
        assert "flag" not in cell["class"]
    # Sub-metrics: POPE's categories and the synthetic set's question types, one column per run.
    pope = submetric_table(page, "pope")
    assert [key for key in pope if key.startswith("adversarial/")] == [
        "adversarial/accuracy", "adversarial/precision", "adversarial/recall", "adversarial/f1",
        "adversarial/yes_ratio", "adversarial/n"]
    for key in ("accuracy", "adversarial/f1", "random/yes_ratio", "random/n"):
        values = [expected[(name, "pope")]["metrics"][key] for name in interrupted_sweep.names]
        assert pope[key] == [f"{v:.2f}" if isinstance(v, float) else str(v) for v in values], key
    assert list(submetric_table(page, "synthetic_shapes")) == [
        "exact_match/color", "exact_match/count", "exact_match/shape", "exact_match/position"]
    # Pictures: the step plot, the bars (tiny-random has no step) and one timeline per run and task, all inline.
    assert page.external == [] and "@import" not in text and "url(" not in text
    plots = [image for image in page.images if image.get("class") == "plot"]
    timelines = [image for image in page.images if image.get("class") == "timeline"]
    assert [image["alt"] for image in plots] == ["score against training step", "score per task"]
    assert len(timelines) == len(interrupted_sweep.names) * len(TASKS)
    for image in page.images:
        picture = decoded_png(image["src"])
        assert picture.size[0] > 300 and picture.size[1] > 150
    step_plot = decoded_png(plots[0]["src"])
    assert step_plot.size == (2 * 430, 300)                       # one panel per task, side by side


@SWEEP_TIMEOUT
def test_the_page_opens_in_headless_chromium(sweep_report, tmp_path):
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(name)), None)
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium): the page was not opened")
    _, _, (html_path, _, _) = sweep_report
    screenshot = tmp_path / "report.png"
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1400",
                             f"--screenshot={screenshot}", html_path.resolve().as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), result.stderr[-3000:]
    with Image.open(screenshot) as image:
        assert image.size == (1280, 1400)
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20)
        assert len(colours) > 200, "a blank or unstyled page"
        title = pixels.crop((0, 0, 400, 60))
        assert min(sum(colour) for _, colour in title.getcolors(maxcolors=1 << 20)) < 150, "no title drawn"
    print(f"screenshot: {screenshot}")


# ------------------------------------------------------------------------------------------------ built by hand

def _write(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def _fingerprint(max_new_tokens: int, dtype: str = "float32", data_file: str = "data/x.jsonl") -> dict:
    return {"model": {"path": "/m"}, "task": {"task": "t", "metric": "m", "data_file": data_file},
            "generation": {"max_new_tokens": max_new_tokens, "num_beams": 1, "temperature": 0.0, "seed": 0},
            "model_settings": {"dtype": dtype, "dynamic": False, "max_num": 6}}


def _scored(task_name: str, rows: list[dict]) -> dict:
    return get_task(task_name).score(rows).to_json(task_name)


def _mme_rows(correct: int) -> list[dict]:
    rows = []
    for subtask in ("existence", "count", "code_reasoning"):
        for image in range(2):
            for answer in ("yes", "no"):
                number = len(rows)
                rows.append({"id": str(number), "subtask": subtask, "image": f"{image}.png", "answer": answer,
                             "prediction": answer if number < correct else ("no" if answer == "yes" else "yes")})
    return rows


def _pope_rows(flip: int) -> list[dict]:
    rows = []
    for category in ("adversarial", "popular", "random"):
        for answer in ("yes", "no", "yes", "no"):
            number = len(rows)
            wrong = number < flip
            rows.append({"id": str(number), "category": category, "answer": answer,
                         "prediction": ("no" if answer == "yes" else "yes") if wrong else answer})
    return rows


def _mmbench_rows(correct: int) -> list[dict]:
    rows = []
    for number, (category, l2) in enumerate([("ocr", "perception"), ("ocr", "perception"),
                                              ("spatial", "reasoning"), ("spatial", "reasoning")]):
        rows.append({"id": str(number), "options": {"A": "red", "B": "blue"}, "answer": "A", "category": category,
                     "l2_category": l2, "prediction": "A" if number < correct else "B"})
    return rows


@pytest.fixture()
def built_results(tmp_path) -> Path:
    """model-a and model-b scored by the real MME, POPE and MMBench scorers; model-b ran MME with another
    max_new_tokens and transformers version; model-c failed before finishing anything."""
    root = tmp_path / "results"
    for name, quality, tokens, version in (("model-a", 10, 10, "5.24.0"), ("model-b", 6, 20, "5.17.0")):
        run = {"status": "done", "updated": "2026-12-01T10:00:00+0000", "versions": {"transformers": "5.24.0"},
               "tasks": {}}
        for task, rows, task_tokens in (("mme", _mme_rows(quality), tokens), ("pope", _pope_rows(12 - quality), 10),
                                        ("mmbench_dev_en", _mmbench_rows(quality // 3), 10)):
            _write(root / name / task / "metrics.json", _scored(task, rows))
            _write(root / name / task / "fingerprint.json", _fingerprint(task_tokens))
            run["tasks"][task] = {"n": len(rows)}
        if name == "model-b":   # MME came from an earlier run with another library version (kept by a sweep)
            earlier = dict(run, versions={"transformers": version}, updated="2026-11-30T09:00:00+0000",
                           tasks={"mme": run["tasks"].pop("mme")})
            _write(root / name / "earlier-runs" / "run-20261130T090000.json", earlier)
        _write(root / name / "run.json", run)
    _write(root / "model-c" / "run.json", {
        "status": "failed", "updated": "2026-12-01T11:00:00+0000", "tasks": {},
        "root_cause": {"rank": 1, "host": "n2", "time": "2026-12-01T10:59:58+0000", "kind": "exception",
                       "message": "RuntimeError: CUDA error: an illegal memory access was encountered"}})
    return root


def test_settings_that_differ_are_flagged_where_the_scores_are_compared(built_results, tmp_path):
    runs = collect(built_results)
    assert [run.label for run in runs] == ["model-a", "model-b", "model-c"]
    differences = settings_differences(runs)
    assert {(d.task, d.key) for d in differences} == {("mme", "generation.max_new_tokens"),
                                                       ("mme", "versions.transformers")}
    tokens = next(d for d in differences if d.key == "generation.max_new_tokens")
    assert tokens.values == {"model-a": 10, "model-b": 20}
    runs, terminal, (html_path, csv_path, markdown_path) = write_report(built_results, tmp_path / "r.html")
    b_row = next(line for line in terminal.splitlines() if line.startswith("model-b "))
    a_row = next(line for line in terminal.splitlines() if line.startswith("model-a "))
    assert b_row.count(" *") == 1 and " *" not in a_row  # flagged: the MME cell of model-b
    assert "* mme: generation.max_new_tokens differs" in terminal
    assert "model-c: last run failed: rank 1 on n2 failed at 2026-12-01T10:59:58+0000 (exception): RuntimeError" \
        in terminal
    rows = {(row["model"], row["task"]): row for row in csv.DictReader(csv_path.read_text().splitlines())}
    assert rows[("model-b", "mme")]["settings_differ"] == \
        "generation.max_new_tokens=20; versions.transformers=\"5.17.0\""
    assert rows[("model-b", "mme")]["date"] == "2026-11-30 09:00"   # from the earlier run that ran MME
    page = parse_page(html_path.read_text())
    cell = page.summary["model-b"]["mme"]
    assert "flag" in cell["class"] and "generation.max_new_tokens = 20 (others: 10)" in cell["title"]
    assert all("flag" not in page.summary["model-b"][task]["class"] for task in ("pope", "mmbench_dev_en"))
    html_text = html_path.read_text()
    assert "Runs that did not finish" in html_text and "CUDA error: an illegal memory access" in html_text
    assert "model-c" in markdown_path.read_text()


def test_sub_metrics_of_mme_pope_and_mmbench_are_tabled_per_run(built_results, tmp_path):
    _, _, (html_path, _, _) = write_report(built_results, tmp_path / "r.html", plots=False)
    page = parse_page(html_path.read_text())
    metrics = {(name, task): json.loads((built_results / name / task / "metrics.json").read_text())
               for name in ("model-a", "model-b") for task in ("mme", "pope", "mmbench_dev_en")}

    for task, keys in (("mme", ["perception", "cognition", "existence/score", "code_reasoning/acc_plus"]),
                       ("pope", ["popular/f1", "random/precision", "adversarial/n"]),
                       ("mmbench_dev_en", ["category/ocr", "category/spatial", "l2_category/reasoning"])):
        shown = submetric_table(page, task)
        for key in keys:
            values = [metrics[(name, task)]["metrics"][key] for name in ("model-a", "model-b")]
            assert shown[key] == [f"{v:.2f}" if isinstance(v, float) else str(v) for v in values], (task, key)
    assert len([key for key in submetric_table(page, "mme") if key.endswith("/score")]) == 3   # one per MME subtask


def test_without_matplotlib_the_page_says_so_and_has_the_rest(built_results, tmp_path):
    out = tmp_path / "r.html"
    code = ("import sys; sys.modules['matplotlib'] = None\n"      # import matplotlib now raises ImportError
            "from launcher.report import main\n"
            f"sys.exit(main([{str(built_results)!r}, '--out', {str(out)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert notes == ["note: plots left out: matplotlib is not installed (pip install 'vlm-eval-launcher[report]', "
                     "or pip install matplotlib)"]
    text = out.read_text()
    assert "matplotlib is not installed" in text and 'id="summary"' in text and 'class="plot"' not in text


def test_a_folder_without_runs_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty" / "task").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err == f"error: no run under {tmp_path / 'empty'}: no <run>/<task>/metrics.json and " \
                                      "no run.json\n"
