"""InternVL's original remote code under transformers 5.x (launcher/remote_code.py).

On our own imitations of each way that code breaks (launcher/tiny_legacy_remote.py: an InternLM2-style
LLM with legacy caches and rotary buffers built in __init__, a chat model without post_init, a config
class that cannot be built without its llm_config): the remote path predicts token for token what a
plain greedy loop over the same weights predicts, InternVL's own batch_chat works on the loaded model,
and each repair is needed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from launcher import remote_code
from launcher.errors import UserError
from launcher.generation import GenerationSettings
from launcher.loading import load_adapter, load_model, load_model_and_tokenizer
from tests.inputs import make_args, noise_image
from tests.runs import child_env, explain, launch

pytestmark = pytest.mark.timeout(240)

PROMPTS = ["what colour is the circle ?", "how many squares are there ?", "describe the picture",
           "is the star on the left ?"]
IMAGE_SIZES = [(56, 56), (120, 50), (40, 100), (90, 90)]
NEW_TOKENS = 8


@pytest.fixture(scope="session")
def legacy_checkpoint(tmp_path_factory) -> Path:
    """Like an InternLM2-based InternVL folder from before August 2025 (every failure mode at once)."""
    from launcher.tiny_models import build_remote_code_internvl

    return build_remote_code_internvl(tmp_path_factory.mktemp("legacy_remote"), seed=3, legacy=True)


@pytest.fixture(scope="session")
def no_post_init_checkpoint(tmp_path_factory) -> Path:
    """The Qwen2-based imitation whose chat model does not call post_init (InternVL before eecca2a)."""
    from launcher.tiny_models import build_remote_code_internvl

    return build_remote_code_internvl(tmp_path_factory.mktemp("no_post_init"), seed=4, post_init=False)


# ----------------------------------------------------------------------------------------------
# The reference: the folder's classes built in this process (buffers computed for real), its weights
# loaded with load_state_dict, and a greedy loop that recomputes the whole sequence every step (no
# generate(), no cache, no from_pretrained).


def reference_model(folder: Path):
    from safetensors.torch import load_file
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    saved = json.loads((folder / "config.json").read_text())
    config_class = get_class_from_dynamic_module(saved["auto_map"]["AutoConfig"], str(folder))
    model_class = get_class_from_dynamic_module(saved["auto_map"]["AutoModel"], str(folder))
    keys = ("vision_config", "llm_config", "force_image_size", "downsample_ratio", "template", "select_layer",
            "use_thumbnail")
    config = config_class(**{key: saved[key] for key in keys})
    model = model_class(config).eval()
    missing, unexpected = model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model


@torch.no_grad()
def greedy_without_cache(model, input_ids, attention_mask, pixel_values, image_token_id, stop_id):
    """New tokens per row, up to and including the stop token."""
    embedding = model.language_model.get_input_embeddings()
    embeds = embedding(input_ids)
    features = model.extract_feature(pixel_values).reshape(-1, embeds.shape[-1])
    embeds[input_ids == image_token_id] = features
    mask = attention_mask.clone()
    new_tokens = []
    for _ in range(NEW_TOKENS):
        positions = mask.long().cumsum(-1) - 1
        positions.masked_fill_(mask == 0, 1)
        logits = model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                      use_cache=False).logits
        token = logits[:, -1].argmax(-1)
        new_tokens.append(token)
        embeds = torch.cat([embeds, embedding(token)[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    rows = []
    for row in torch.stack(new_tokens, dim=1).tolist():
        rows.append(row[:row.index(stop_id) + 1] if stop_id in row else row)
    return rows


def launcher_tokens(adapter, prompts, images):
    """The adapter's own collate and generate; the token ids its model.generate returned."""
    from types import SimpleNamespace

    captured = []
    original = adapter.model.generate

    def recording(*args, **kwargs):
        output = original(*args, **kwargs)
        captured.append(output)
        return output

    adapter.model.generate = recording
    try:
        batch = adapter.collate([SimpleNamespace(id=i) for i in range(len(prompts))], prompts,
                                [[image] for image in images])
        texts = adapter.generate(batch, GenerationSettings(max_new_tokens=NEW_TOKENS))
    finally:
        adapter.model.generate = original
    rows = []
    for row in captured[0].tolist():
        rows.append(row[:row.index(adapter.eos_token_id) + 1] if adapter.eos_token_id in row else row)
    return batch, rows, texts


def images():
    return [noise_image(width, height, seed=index) for index, (width, height) in enumerate(IMAGE_SIZES)]


@pytest.mark.parametrize("folder", ["legacy_checkpoint", "no_post_init_checkpoint"])
def test_remote_path_predicts_what_a_greedy_loop_without_cache_predicts(folder, request):
    checkpoint = request.getfixturevalue(folder)
    adapter = load_adapter(make_args(checkpoint, trust_remote_code=True, dynamic=True, max_num=4))
    batch, predicted, texts = launcher_tokens(adapter, PROMPTS, images())
    reference = reference_model(checkpoint)
    inputs = batch.to(torch.device("cpu"), torch.float32)
    expected = greedy_without_cache(reference, inputs["input_ids"], inputs["attention_mask"],
                                    inputs["pixel_values"], adapter.model.img_context_token_id,
                                    adapter.eos_token_id)
    assert batch.tensors["input_ids"].shape[0] == len(PROMPTS)
    assert sorted(set(len(row) for row in batch.extra["num_patches"])) == [1]
    assert len({n[0] for n in batch.extra["num_patches"]}) > 1           # items of different tile counts
    assert predicted == expected
    assert all(texts)


def test_internvl_batch_chat_works_on_the_loaded_model_and_equals_the_launcher(legacy_checkpoint):
    model, tokenizer = load_model_and_tokenizer(make_args(legacy_checkpoint, trust_remote_code=True,
                                                          model_code="remote"))
    assert type(model).__name__ == "TinyInternVLChatModel"
    adapter = load_adapter(make_args(legacy_checkpoint, trust_remote_code=True, dynamic=True, max_num=4))
    pixels = [adapter.tiles(image) for image in images()]
    answers = model.batch_chat(tokenizer, torch.cat(pixels), PROMPTS, dict(max_new_tokens=NEW_TOKENS, do_sample=False),
                               num_patches_list=[p.shape[0] for p in pixels])
    chat = model.chat(tokenizer, pixels[1], PROMPTS[1], dict(max_new_tokens=NEW_TOKENS, do_sample=False))
    _, _, texts = launcher_tokens(adapter, PROMPTS, images())
    assert answers == texts and chat == texts[1]


# ----------------------------------------------------------------------------------------------
# Each repair, and that it is needed


def test_plain_from_pretrained_fails_on_the_legacy_folder(legacy_checkpoint):
    """Without the repairs (a fresh process: this one's classes are patched): 5.2x fails on the missing
    post_init, 5.17 already while building the default config."""
    import subprocess

    code = ("import sys; from transformers import AutoModel; "
            "AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)")
    result = subprocess.run([sys.executable, "-c", code, str(legacy_checkpoint)], capture_output=True, text=True,
                            env=child_env(), timeout=120)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "all_tied_weights_keys" in last_line or "Unsupported architecture" in last_line, last_line


def test_a_two_gpu_plan_of_the_legacy_folder_builds_its_skeleton(legacy_checkpoint):
    from launcher.loading import inspect_checkpoint, plan_multi_gpu_map

    device_map = plan_multi_gpu_map(inspect_checkpoint(legacy_checkpoint), [torch.device("cuda", 2),
                                    torch.device("cuda", 3)], method="internvl", trust_remote_code=True,
                                    max_memory={2: 4 << 30, 3: 4 << 30})
    assert device_map["vision_model"] == 2 and device_map["language_model.output"] == 2
    assert {device_map[f"language_model.model.layers.{i}"] for i in range(3)} == {2, 3}


def test_uninitialised_rotary_buffers_are_rebuilt_after_loading(legacy_checkpoint):
    saved = json.loads((legacy_checkpoint / "config.json").read_text())
    loaded = load_model(make_args(legacy_checkpoint, trust_remote_code=True), [torch.device("cpu")])
    reference = reference_model(legacy_checkpoint)
    rotary = loaded.model.language_model.model.layers[0].attention.rotary_emb
    expected = reference.language_model.model.layers[0].attention.rotary_emb
    for name in ("inv_freq", "cos_cached", "sin_cached"):
        assert torch.equal(getattr(rotary, name), getattr(expected, name)), name
    # What loading leaves there without the rebuild: reload skipping repair_remote_model's buffer step.
    from transformers import AutoModel

    raw = AutoModel.from_pretrained(str(legacy_checkpoint), trust_remote_code=True, dtype=torch.float32,
                                    **remote_code.prepare_remote_code(legacy_checkpoint, saved))
    raw_rotary = raw.language_model.model.layers[0].attention.rotary_emb
    assert not torch.equal(raw_rotary.cos_cached, expected.cos_cached)
    assert remote_code.recompute_buffers(raw, torch.float32) == [
        f"language_model.model.layers.{i}.attention.rotary_emb" for i in range(3)]
    assert torch.equal(raw_rotary.cos_cached, expected.cos_cached)


def test_the_cache_bridge_is_what_lets_generate_continue_from_the_cache(legacy_checkpoint):
    loaded = load_model(make_args(legacy_checkpoint, trust_remote_code=True), [torch.device("cpu")])
    language_model = loaded.model.language_model
    assert "_launcher_cache_bridge" in vars(language_model)
    # Undo the bridge: generate (5.x) now re-sends the prompt, or feeds positions of the whole sequence.
    del language_model.prepare_inputs_for_generation
    del language_model.__dict__["_launcher_cache_bridge"]
    embeds = language_model.get_input_embeddings()(torch.tensor([[5, 6, 7, 8, 9]]))
    kwargs = dict(inputs_embeds=embeds, attention_mask=torch.ones(1, 5, dtype=torch.long), max_new_tokens=3,
                  do_sample=False, use_cache=True)
    try:
        broken = language_model.generate(**kwargs).tolist()
    except (RuntimeError, IndexError, TypeError, AttributeError):
        broken = None
    assert remote_code.bridge_legacy_cache(loaded.model) == ["language_model"]
    fixed = language_model.generate(**kwargs).tolist()
    reference = reference_model(legacy_checkpoint)
    with torch.no_grad():
        tokens, sequence = [], embeds
        for _ in range(3):
            logits = reference.language_model(inputs_embeds=sequence, use_cache=False).logits
            tokens.append(int(logits[0, -1].argmax()))
            sequence = torch.cat([sequence, reference.language_model.get_input_embeddings()(
                torch.tensor([[tokens[-1]]]))], dim=1)
    assert fixed[0][-3:] == tokens
    assert broken is None or broken[0][-3:] != tokens


def test_a_config_class_that_cannot_build_its_default_gets_the_folders_llm_as_default():
    from transformers import PretrainedConfig, Qwen2Config

    class StrictConfig(PretrainedConfig):
        model_type = "strict_test_config"

        def __init__(self, vision_config=None, llm_config=None, **kwargs):
            super().__init__(**kwargs)
            llm_config = llm_config if llm_config is not None else {"architectures": [""]}
            if llm_config["architectures"][0] != "Qwen2ForCausalLM":
                raise ValueError("Unsupported architecture: {}".format(llm_config["architectures"][0]))
            self.llm_config = Qwen2Config(**llm_config)

    with pytest.raises(ValueError, match="Unsupported architecture: $"):
        StrictConfig()
    folder_config = {"llm_config": {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 48}}
    assert remote_code.default_subconfigs(StrictConfig, folder_config)
    assert StrictConfig().llm_config.architectures == ["Qwen2ForCausalLM"]
    assert StrictConfig(llm_config={"architectures": ["Qwen2ForCausalLM"], "hidden_size": 48}).llm_config.hidden_size == 48
    assert StrictConfig(None, None).llm_config.architectures == ["Qwen2ForCausalLM"]
    assert not remote_code.default_subconfigs(StrictConfig, folder_config)     # once


def test_a_model_class_without_post_init_gets_it_once():
    from transformers import PreTrainedModel, Qwen2Config

    class Counting(PreTrainedModel):
        config_class = Qwen2Config

        def __init__(self, config):
            super().__init__(config)
            self.linear = torch.nn.Linear(2, 2)

        def post_init(self):
            self.__dict__["post_init_calls"] = self.__dict__.get("post_init_calls", 0) + 1
            super().post_init()

    class WithoutPostInit(Counting):
        pass

    class WithPostInit(Counting):
        def __init__(self, config):
            super().__init__(config)
            self.post_init()

    config = Qwen2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                         vocab_size=8)
    assert "post_init_calls" not in WithoutPostInit(config).__dict__
    for cls in (WithoutPostInit, WithPostInit):
        assert remote_code.ensure_post_init(cls)
        model = cls(config)
        assert model.post_init_calls == 1, cls.__name__
        assert isinstance(model.all_tied_weights_keys, dict)
        assert not remote_code.ensure_post_init(cls)       # once


# ----------------------------------------------------------------------------------------------
# Packages the folder's code imports


@pytest.fixture(scope="session")
def importing_checkpoint(legacy_checkpoint, tmp_path_factory) -> Path:
    """The legacy imitation whose chat model also imports einops, timm and sentencepiece at its top."""
    import shutil

    folder = tmp_path_factory.mktemp("importing") / "checkpoint"
    shutil.copytree(legacy_checkpoint, folder)
    modeling = folder / "modeling_tiny_internvl_chat.py"
    modeling.write_text("import einops\nimport timm\nimport sentencepiece\n" + modeling.read_text())
    return folder


def test_imports_are_read_from_every_file_the_auto_map_reaches(importing_checkpoint):
    saved = json.loads((importing_checkpoint / "config.json").read_text())
    imports = remote_code.code_imports(importing_checkpoint, saved)
    assert imports["einops"] == imports["timm"] == imports["sentencepiece"] == ["modeling_tiny_internvl_chat.py"]
    # reached only through the chat model's relative import
    assert "modeling_tiny_legacy_lm.py" in imports["transformers.modeling_outputs"]
    assert "dataclasses" in imports          # conversation.py, imported relatively too


def test_missing_packages_are_one_user_error_naming_them_and_the_pip_command(importing_checkpoint, monkeypatch):
    for package in ("einops", "timm", "sentencepiece"):
        monkeypatch.setitem(sys.modules, package, None)     # import fails, installed or not
    with pytest.raises(UserError) as raised:
        load_model(make_args(importing_checkpoint, trust_remote_code=True), [torch.device("cpu")])
    message = str(raised.value)
    for package in ("einops", "timm", "sentencepiece"):
        assert f"{package} (modeling_tiny_internvl_chat.py)" in message
    assert "Install them (pip install einops sentencepiece timm)" in message
    assert "\n" not in message


def test_code_written_for_a_transformers_that_had_other_modules_is_named_as_such(legacy_checkpoint, tmp_path):
    import shutil

    import transformers

    folder = tmp_path / "outdated"
    shutil.copytree(legacy_checkpoint, folder)
    lm_file = folder / "modeling_tiny_legacy_lm.py"
    lm_file.write_text("from transformers.modeling_attn_mask_utils_gone import helper  # noqa\n" + lm_file.read_text())
    with pytest.raises(UserError) as raised:
        load_model(make_args(folder, trust_remote_code=True), [torch.device("cpu")])
    message = str(raised.value)
    assert (f"transformers.modeling_attn_mask_utils_gone (modeling_tiny_legacy_lm.py; not in transformers "
            f"{transformers.__version__})") in message
    assert "written for an older transformers" in message and "pip install" not in message


def test_a_package_that_imports_but_breaks_names_what_it_needs(tmp_path, monkeypatch):
    (tmp_path / "broken_dependency_pkg").mkdir()
    (tmp_path / "broken_dependency_pkg" / "__init__.py").write_text("import not_installed_vision_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    missing = remote_code.missing_code_packages({"broken_dependency_pkg": ["modeling_x.py"], "os": ["a.py"],
                                                 "torch": ["a.py"]})
    assert missing == {"broken_dependency_pkg": "needs not_installed_vision_pkg"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from eval_scripts.synthetic import generate_benchmark

    root = tmp_path_factory.mktemp("data")
    generate_benchmark(root / "synthetic", n_items=5, seed=7, split="test")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_launch_with_a_missing_package_exits_2_with_one_line(importing_checkpoint, data_root, tmp_path, workers):
    # sitecustomize runs at interpreter start: these packages then fail to import, installed or not.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nfor name in ('einops', 'timm', 'sentencepiece'):\n    sys.modules[name] = None\n")
    env = child_env()
    env["PYTHONPATH"] = str(site) + ":" + env["PYTHONPATH"]
    result = launch(["--checkpoint", importing_checkpoint, "--trust-remote-code", "--task", "synthetic_shapes",
                     "--data-root", data_root, "--out-dir", tmp_path / "out", "--num-workers", workers], env=env)
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr
    assert "pip install einops sentencepiece timm" in result.stderr


def test_launch_runs_the_legacy_folder_end_to_end(legacy_checkpoint, data_root, tmp_path):
    result = launch(["--checkpoint", legacy_checkpoint, "--trust-remote-code", "--task", "synthetic_shapes",
                     "--data-root", data_root, "--out-dir", tmp_path, "--num-workers", "1", "--batch-size", "2"])
    assert result.returncode == 0, explain(result)
    rows = [json.loads(line) for line in (tmp_path / "synthetic_shapes" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(row["prediction"] for row in rows)
