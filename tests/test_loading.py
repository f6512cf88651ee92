"""load_model_and_tokenizer: each mode on the CPU, and one clear message for each bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from launcher.errors import UserError
from launcher.loading import (
    ensure_generate, inspect_checkpoint, load_model, load_model_and_tokenizer, plan_multi_gpu_map)
from tests.inputs import make_args

pytestmark = pytest.mark.timeout(180)


def linear_classes(model) -> set[str]:
    return {type(module).__name__ for module in model.modules() if "Linear" in type(module).__name__}


# ----------------------------------------------------------------------------------------------
# Modes


def test_native_checkpoint_loads_on_cpu_in_float32_and_eval_mode(native_checkpoint):
    model, tokenizer = load_model_and_tokenizer(make_args(native_checkpoint))
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert not model.training
    assert model.dtype == torch.float32
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert tokenizer.context_image_token == "<IMG_CONTEXT>"


def test_dtype_is_taken_from_args(native_checkpoint):
    model, _ = load_model_and_tokenizer(make_args(native_checkpoint, dtype="bfloat16"))
    assert model.dtype == torch.bfloat16


def test_load_in_8bit_makes_linear_layers_int8(native_checkpoint):
    loaded = load_model(make_args(native_checkpoint, load_in_8bit=True))
    assert "Linear8bitLt" in linear_classes(loaded.model)
    assert loaded.quantization == "8bit"


def test_load_in_4bit_makes_linear_layers_4bit(native_checkpoint):
    loaded = load_model(make_args(native_checkpoint, load_in_4bit=True))
    assert "Linear4bit" in linear_classes(loaded.model)
    assert loaded.quantization == "4bit"


def test_remote_code_loads_with_the_flag(remote_checkpoint):
    model, tokenizer = load_model_and_tokenizer(make_args(remote_checkpoint, trust_remote_code=True))
    assert type(model).__name__ == "TinyInternVLChatModel"
    assert not model.training
    assert hasattr(model.language_model, "generate")


def test_remote_code_loads_in_8bit(remote_checkpoint):
    model, _ = load_model_and_tokenizer(make_args(remote_checkpoint, trust_remote_code=True, load_in_8bit=True))
    assert "Linear8bitLt" in linear_classes(model)


def test_explicit_cpu_device_list(native_checkpoint):
    loaded = load_model(make_args(native_checkpoint), devices=[torch.device("cpu")])
    assert loaded.devices == [torch.device("cpu")]
    assert loaded.device_map == {"": "cpu"}


def test_pickle_weights_load_with_the_flag(native_checkpoint, tmp_path):
    folder = pickle_only_copy(native_checkpoint, tmp_path)
    model, _ = load_model_and_tokenizer(make_args(folder, allow_pickle_weights=True))
    reference, _ = load_model_and_tokenizer(make_args(native_checkpoint))
    assert torch.equal(model.lm_head.weight, reference.lm_head.weight)


# ----------------------------------------------------------------------------------------------
# Bad input: one UserError each, naming the fix


def test_missing_checkpoint_folder(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_model_and_tokenizer(make_args(tmp_path / "nope"))


def test_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(UserError, match="not a model folder: it has no config.json"):
        load_model_and_tokenizer(make_args(tmp_path))


def test_no_checkpoint_given():
    with pytest.raises(UserError, match="no --checkpoint"):
        load_model_and_tokenizer(make_args(""))


def test_8bit_and_4bit_together(native_checkpoint):
    with pytest.raises(UserError, match="--load-in-8bit and --load-in-4bit exclude each other"):
        load_model_and_tokenizer(make_args(native_checkpoint, load_in_8bit=True, load_in_4bit=True))


def test_more_gpus_than_visible(native_checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match="--gpus-per-model 2 asks for 2 GPUs, but no GPU is visible"):
        load_model_and_tokenizer(make_args(native_checkpoint, gpus_per_model=2))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="--gpus-per-model 4 asks for 4 GPUs, but this process sees 2"):
        load_model_and_tokenizer(make_args(native_checkpoint, gpus_per_model=4))


def test_remote_code_without_the_flag(remote_checkpoint):
    with pytest.raises(UserError, match="pass --trust-remote-code"):
        load_model_and_tokenizer(make_args(remote_checkpoint))


def test_pickle_weights_without_the_flag(native_checkpoint, tmp_path):
    folder = pickle_only_copy(native_checkpoint, tmp_path)
    with pytest.raises(UserError, match="unpickling a file can run arbitrary code: pass --allow-pickle-weights"):
        load_model_and_tokenizer(make_args(folder))


def test_bitsandbytes_missing(native_checkpoint, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(UserError, match="--load-in-4bit needs the bitsandbytes package"):
        load_model_and_tokenizer(make_args(native_checkpoint, load_in_4bit=True))


def test_bad_dtype(native_checkpoint):
    with pytest.raises(UserError, match="--dtype must be"):
        load_model_and_tokenizer(make_args(native_checkpoint, dtype="int3"))


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not_a_model"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="model type 'not_a_model' is unknown to transformers"):
        load_model_and_tokenizer(make_args(tmp_path))


def test_inspect_sees_safetensors_and_auto_map(native_checkpoint, remote_checkpoint):
    native = inspect_checkpoint(native_checkpoint)
    assert native.safetensors == ("model.safetensors",) and not native.is_remote_code
    remote = inspect_checkpoint(remote_checkpoint)
    assert remote.is_remote_code and "AutoModel" in remote.auto_map


# ----------------------------------------------------------------------------------------------
# Multi-GPU maps (planned for GPUs this machine does not have: no weights are read)


@pytest.mark.parametrize("method", ["planner", "internvl"])
def test_two_gpu_map_covers_every_module_of_the_native_model(native_checkpoint, method):
    info = inspect_checkpoint(native_checkpoint)
    device_map = plan_multi_gpu_map(info, [torch.device("cuda", 0), torch.device("cuda", 1)], method=method,
                                    dtype=torch.bfloat16, max_memory={0: 4 << 30, 1: 4 << 30})
    layers = {k: v for k, v in device_map.items() if ".layers." in k}
    assert sorted(layers) == [f"model.language_model.layers.{i}" for i in range(4)]
    assert set(layers.values()) == {0, 1}
    assert device_map["model.vision_tower"] == 0


def test_two_gpu_map_of_the_remote_model(remote_checkpoint):
    info = inspect_checkpoint(remote_checkpoint)
    device_map = plan_multi_gpu_map(info, [torch.device("cuda", 2), torch.device("cuda", 3)], method="internvl",
                                    trust_remote_code=True, max_memory={2: 4 << 30, 3: 4 << 30})
    assert device_map["vision_model"] == 2 and device_map["mlp1"] == 2
    assert {device_map[f"language_model.model.layers.{i}"] for i in range(4)} == {2, 3}


# ----------------------------------------------------------------------------------------------
# transformers 5 compatibility of remote code written for 4.x


def test_ensure_generate_gives_a_legacy_language_model_a_working_generate():
    from transformers import GenerationMixin, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM, Qwen2Model
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class LegacyLM(PreTrainedModel):
        """Like InternLM2ForCausalLM in InternVL's remote code: a PreTrainedModel without GenerationMixin."""

        config_class = Qwen2Config

        def __init__(self, config):
            super().__init__(config)
            self.model = Qwen2Model(config)
            self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            self.post_init()

        def get_input_embeddings(self):
            return self.model.embed_tokens

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            # The cache keyword differs between transformers versions (past_key_values / cache): pass it on.
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            rest = {key: value for key, value in out.items() if key != "last_hidden_state"}
            return CausalLMOutputWithPast(logits=self.lm_head(out.last_hidden_state), **rest)

    class Wrapper(torch.nn.Module):
        def __init__(self, language_model):
            super().__init__()
            self.language_model = language_model

    config = Qwen2Config(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, initializer_range=0.3)
    torch.manual_seed(0)
    legacy = LegacyLM(config).eval()
    assert not isinstance(legacy, GenerationMixin)
    wrapper = Wrapper(legacy)
    assert ensure_generate(wrapper) == ["language_model"]
    reference = Qwen2ForCausalLM(config).eval()
    reference.load_state_dict(legacy.state_dict())
    input_ids = torch.tensor([[3, 5, 7, 9]])
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(wrapper.language_model.generate(input_ids, **kwargs), reference.generate(input_ids, **kwargs))
    assert ensure_generate(wrapper) == []          # idempotent


# ----------------------------------------------------------------------------------------------


def pickle_only_copy(checkpoint: Path, tmp_path: Path) -> Path:
    """The checkpoint with its weights as pytorch_model.bin instead of safetensors."""
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(checkpoint, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder
