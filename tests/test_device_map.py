"""Device maps: InternVL's split rule, layout detection, the byte planner and the dry run.

Everything runs on the CPU: real tiny models for names and loading ("cpu"/"disk" stand in for
GPUs), meta-device skeletons with fake GPU ids for the planner.
"""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from launcher.device_map import (
    LAYOUTS,
    NoGPUError,
    Plan,
    PlanDoesNotFit,
    build_skeleton,
    check_device_map,
    count_layers,
    detect_layout,
    dry_run_plan,
    estimate_headroom,
    estimate_runtime_bytes,
    format_plan,
    headroom_per_device,
    image_tokens_per_tile,
    layer_counts,
    layout_for_model,
    make_plan,
    plan_device_map,
    split_model,
    summarise_plan,
)
from launcher.errors import UserError

pytestmark = pytest.mark.timeout(120)

TEXT_LAYERS = 6
IMAGE_TOKEN_ID = 100


# ------------------------------------------------------------------------------------------
# Fixtures: tiny models built from configs (no tokenizer needed)


def _tiny_config(text_layers: int = TEXT_LAYERS, hidden: int = 64, tie: bool = True):
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    vision = InternVLVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  image_size=56, patch_size=14)
    text = Qwen2Config(hidden_size=hidden, num_hidden_layers=text_layers, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=2 * hidden, vocab_size=128, tie_word_embeddings=tie,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = InternVLConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=IMAGE_TOKEN_ID,
                            image_seq_length=4, downsample_ratio=0.5, tie_word_embeddings=tie)
    config.text_config.tie_word_embeddings = tie
    return config


def _skeleton(config):
    from accelerate import init_empty_weights
    from transformers import InternVLForConditionalGeneration

    with init_empty_weights():
        model = InternVLForConditionalGeneration(config)
    model.tie_weights()
    return model


def _names(model) -> list[str]:
    return [name for name, _ in model.named_modules()]


@pytest.fixture(scope="session")
def tiny_model():
    from transformers import InternVLForConditionalGeneration

    torch.manual_seed(0)
    return InternVLForConditionalGeneration(_tiny_config()).eval()


@pytest.fixture(scope="session")
def tiny_folder(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_internvl")
    tiny_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_skeleton():
    return _skeleton(_tiny_config())


@pytest.fixture(scope="session")
def wide_skeleton():
    """24 decoder layers of 256 wide: enough layers and bytes for balance to be measurable."""
    return _skeleton(_tiny_config(text_layers=24, hidden=256))


@pytest.fixture(scope="session")
def untied_skeleton():
    return _skeleton(_tiny_config(text_layers=24, hidden=256, tie=False))


@pytest.fixture(scope="session")
def generation_inputs():
    # Two prompts, one left-padded, each with one 56x56 tile (4 image tokens).
    image = [IMAGE_TOKEN_ID] * 4
    input_ids = torch.tensor([[0, 0, 1] + image + [5, 6], [1] + image + [7, 8, 9, 10]])
    attention_mask = torch.tensor([[0, 0] + [1] * 7, [1] * 9])
    torch.manual_seed(1)
    pixel_values = torch.randn(2, 3, 56, 56)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


@pytest.fixture(scope="session")
def reference_tokens(tiny_model, generation_inputs):
    with torch.no_grad():
        return tiny_model.generate(**generation_inputs, max_new_tokens=6, do_sample=False)


def _module(**children: nn.Module) -> nn.Module:
    module = nn.Module()
    for name, child in children.items():
        module.add_module(name, child)
    return module


@pytest.fixture(scope="session")
def remote_chat_like():
    """The remote-code InternVLChatModel's tree: vision_model, mlp1, language_model (a real Qwen2ForCausalLM).

    Its vision encoder has as many layers as the LLM, which must not be taken for the decoder.
    """
    from accelerate import init_empty_weights
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with init_empty_weights():
        llm = Qwen2ForCausalLM(Qwen2Config(hidden_size=64, num_hidden_layers=TEXT_LAYERS, num_attention_heads=4,
                                           num_key_value_heads=2, intermediate_size=128, vocab_size=128,
                                           bos_token_id=1, eos_token_id=2))
        vision = _module(embeddings=_module(patch_embedding=nn.Conv2d(3, 8, 14, 14)),
                         encoder=_module(layers=nn.ModuleList(nn.Linear(8, 8) for _ in range(TEXT_LAYERS))))
        return _module(vision_model=vision, mlp1=nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 64)),
                       language_model=llm)


@pytest.fixture(scope="session")
def internlm2_chat_like():
    """InternVLChatModel over InternLM2: tok_embeddings, output, rotary inside each attention block."""
    def block() -> nn.Module:
        return _module(attention=_module(wqkv=nn.Linear(8, 24), rotary_emb=nn.Identity()),
                       feed_forward=nn.Linear(8, 8))

    llm = _module(model=_module(tok_embeddings=nn.Embedding(16, 8),
                                layers=nn.ModuleList(block() for _ in range(4)), norm=nn.LayerNorm(8)),
                  output=nn.Linear(8, 16))
    return _module(vision_model=_module(encoder=_module(layers=nn.ModuleList(nn.Linear(8, 8) for _ in range(2)))),
                   mlp1=nn.Linear(8, 8), language_model=llm)


# ------------------------------------------------------------------------------------------
# InternVL's rule: counts


@pytest.mark.parametrize(
    "num_layers, num_devices, vit_alpha, expected",
    [
        # The contract's worked counts.
        (32, 8, 0.5, [2, 5, 5, 4, 4, 4, 4, 4]),
        (80, 8, 0.5, [5, 11, 11, 11, 11, 11, 10, 10]),
        (48, 8, 0.5, [3, 7, 7, 7, 6, 6, 6, 6]),
        (28, 1, 0.5, [28]),
        # More, computed by hand from share = L / (G - alpha).
        (32, 2, 0.5, [11, 21]),
        (28, 2, 0.5, [9, 19]),
        (24, 4, 0.5, [3, 7, 7, 7]),
        (60, 4, 0.5, [9, 17, 17, 17]),
        (28, 4, 0.0, [7, 7, 7, 7]),
        (9, 8, 0.0, [1, 2, 1, 1, 1, 1, 1, 1]),
        (80, 8, 0.9, [1, 12, 12, 11, 11, 11, 11, 11]),
        (8, 8, 0.5, [1, 1, 1, 1, 1, 1, 1, 1]),
        (1, 1, 0.0, [1]),
        (1, 1, 0.99, [1]),
        # Fewer layers than GPUs: the trailing GPUs stay empty (no ghost keys).
        (1, 2, 0.5, [0, 1]),
        (1, 2, 0.0, [1, 0]),
        (3, 8, 0.5, [0, 1, 1, 1, 0, 0, 0, 0]),
    ],
)
def test_layer_counts_follow_internvls_rule(num_layers, num_devices, vit_alpha, expected):
    assert layer_counts(num_layers, num_devices, vit_alpha) == expected


def _layer_devices(device_map: dict, prefix: str) -> dict[int, int]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)$")
    return {int(m[1]): device for key, device in device_map.items() if (m := pattern.match(key))}


@pytest.mark.parametrize("vit_alpha", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
@pytest.mark.parametrize("devices", [[0], [0, 1], [0, 1, 2], [4, 5, 6, 7], [3, 1, 2, 0, 5], list(range(8)), [7, 5, 3]])
def test_every_layer_has_exactly_one_key_and_no_gpu_idles(devices, vit_alpha):
    prefix = LAYOUTS["internvl_chat"]["layers_prefix"]
    for num_layers in list(range(1, 40)) + [48, 60, 64, 80, 95, 126]:
        device_map = split_model(num_layers, vit_alpha, devices=devices)
        by_layer = _layer_devices(device_map, prefix)
        layer_keys = [key for key in device_map if key.startswith(prefix + ".")]
        assert len(layer_keys) == num_layers and sorted(by_layer) == list(range(num_layers))
        assert set(device_map.values()) <= set(devices)
        # Layers stay in pipeline order along the device list.
        positions = [devices.index(by_layer[i]) for i in range(num_layers)]
        assert positions == sorted(positions)
        used = set(by_layer.values())
        if num_layers >= len(devices):
            assert set(devices[1:]) <= used, (num_layers, devices, vit_alpha)
        else:  # the devices after the last used one are the empty ones
            used_positions = sorted(devices.index(d) for d in used)
            assert used_positions[-1] - used_positions[0] + 1 == len(used)


def test_pinned_modules_go_on_the_first_device_of_any_gpu_group():
    device_map = split_model(32, devices=[4, 5, 6, 7])
    for role in ("vision", "projector", "embeddings", "norm", "rotary", "head"):
        assert device_map[LAYOUTS["internvl_chat"][role]] == 4
    counts = [list(device_map.values()).count(d) for d in (4, 5, 6, 7)]
    assert counts == [5 + 6, 9, 9, 9]  # share 32 / 3.5: floor(4.57 + 0.5) = 5 first, 27 over three


def test_the_last_layer_stays_where_the_rule_puts_it():
    device_map = split_model(32, devices=list(range(8)))
    assert device_map["language_model.model.layers.31"] == 7
    assert device_map["language_model.lm_head"] == 0


@pytest.mark.parametrize("layout", ["internvl_chat", "internvl_chat_internlm2", "hf"])
def test_preset_layouts_name_exactly_their_modules(layout):
    roles = LAYOUTS[layout]
    device_map = split_model(4, devices=[0, 1], layout=layout)
    expected = {name for role, name in roles.items() if role != "layers_prefix" and name}
    expected |= {f"{roles['layers_prefix']}.{i}" for i in range(4)}
    assert set(device_map) == expected


def test_internlm2_layout_has_no_model_level_rotary_key():
    device_map = split_model(4, devices=[0], layout="internvl_chat_internlm2")
    assert "language_model.model.rotary_emb" not in device_map
    assert device_map["language_model.model.tok_embeddings"] == 0 and device_map["language_model.output"] == 0


def test_a_role_mapping_is_a_layout():
    layout = {"layers_prefix": "transformer.h", "embeddings": "transformer.wte", "head": "lm_head",
              "others": ("transformer.wpe",)}
    device_map = split_model(3, devices=[2, 3], layout=layout)
    assert device_map == {"transformer.wte": 2, "transformer.wpe": 2, "transformer.h.0": 2, "transformer.h.1": 3,
                          "transformer.h.2": 3, "lm_head": 2}


def test_default_devices_are_all_visible_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert set(split_model(32).values()) == {0, 1, 2, 3}


def test_no_visible_gpu_is_a_clear_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(NoGPUError, match="no GPU is visible") as caught:
        split_model(32)
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)
    assert "devices=" in str(caught.value)


@pytest.mark.parametrize("vit_alpha", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "half", None])
def test_vit_alpha_outside_zero_one_is_rejected(vit_alpha):
    with pytest.raises(UserError, match="vit_alpha"):
        split_model(32, vit_alpha, devices=[0, 1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_layers": 0}, "num_layers"),
        ({"num_layers": -3}, "num_layers"),
        ({"num_layers": 2.5}, "num_layers"),
        ({"num_layers": True}, "num_layers"),
        ({"devices": []}, "empty"),
        ({"devices": [0, 0]}, "once"),
        ({"devices": [-1, 0]}, "non-negative"),
        ({"devices": ["cuda:0"]}, "non-negative"),
        ({"layout": "llava"}, "unknown layout"),
        ({"layout": {"embeddings": "x"}}, "layers_prefix"),
        ({"layout": {"layers_prefix": "m.layers", "lm_head": "h"}}, "unknown layout roles"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs, message):
    arguments = {"num_layers": 8, "devices": [0, 1], **kwargs}
    with pytest.raises(UserError, match=message):
        split_model(**arguments)


# ------------------------------------------------------------------------------------------
# Layout detection from real module trees


def test_detects_the_native_internvl_layout(tiny_model):
    assert detect_layout(_names(tiny_model)) == {**LAYOUTS["hf"], "others": ()}


def test_detects_the_remote_code_internvl_chat_layout(remote_chat_like):
    assert detect_layout(_names(remote_chat_like)) == {**LAYOUTS["internvl_chat"], "others": ()}


def test_detects_the_internlm2_chat_layout(internlm2_chat_like):
    layout = detect_layout(_names(internlm2_chat_like))
    expected = {role: name for role, name in LAYOUTS["internvl_chat_internlm2"].items() if name}
    assert layout == {**expected, "others": ()}


def test_a_vision_encoder_with_more_blocks_than_the_llm_is_not_the_decoder():
    from accelerate import init_empty_weights
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        vision_config=dict(depth=8, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14),
        text_config=dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=128, bos_token_id=1, eos_token_id=2,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]}),
    )
    with init_empty_weights():
        model = Qwen2VLForConditionalGeneration(config)
    layout = detect_layout(_names(model))
    assert layout["layers_prefix"] == "model.language_model.layers"
    assert layout["vision"] == "model.visual" and layout["head"] == "lm_head"
    assert count_layers(_names(model), layout["layers_prefix"]) == 4


def test_generic_causal_lm_groups_what_it_cannot_name():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                       bos_token_id=1, eos_token_id=2))
    layout = detect_layout(_names(model))
    assert layout == {"layers_prefix": "transformer.h", "embeddings": "transformer.wte", "norm": "transformer.ln_f",
                      "head": "lm_head", "others": ("transformer.wpe", "transformer.drop")}
    device_map = split_model(3, devices=[0, 1], layout=layout)
    check_device_map(device_map, model, allowed_devices=[0, 1])


def test_parameters_owned_by_an_ancestor_join_others():
    layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
    model = _module(model=_module(embed_tokens=nn.Embedding(4, 4), layers=layers))
    model.model.register_parameter("image_newline", nn.Parameter(torch.zeros(4)))
    layout = layout_for_model(model)
    assert layout["others"] == ("model.image_newline",)
    check_device_map(split_model(2, devices=[0], layout=layout), model, allowed_devices=[0])


def test_no_decoder_stack_is_a_user_error():
    with pytest.raises(UserError, match="no decoder layers"):
        detect_layout(["", "encoder", "encoder.conv", "head"])


def test_count_layers_needs_a_gapless_numbering():
    names = ["m.layers", "m.layers.0", "m.layers.0.mlp", "m.layers.1", "m.layers.2", "m.layers10.0"]
    assert count_layers(names, "m.layers") == 3
    with pytest.raises(UserError, match=r"missing \[1\]"):
        count_layers(["m.layers.0", "m.layers.2"], "m.layers")
    with pytest.raises(UserError, match="no modules named"):
        count_layers(names, "model.layers")


# ------------------------------------------------------------------------------------------
# Maps against real models: key checks and real loading ("cpu"/"disk" stand in for GPUs)


def test_hf_split_names_only_real_modules_and_covers_every_parameter(tiny_model):
    layout = detect_layout(_names(tiny_model))
    device_map = split_model(TEXT_LAYERS, devices=[0, 1, 2], layout=layout)
    assert set(device_map) <= set(_names(tiny_model))
    check_device_map(device_map, tiny_model, allowed_devices=[0, 1, 2])


def _on_cpu_and_disk(device_map: dict, disk_devices: set) -> dict:
    return {key: "disk" if device in disk_devices else "cpu" for key, device in device_map.items()}


@pytest.mark.parametrize("method", ["internvl", "planner"])
def test_a_split_map_loads_and_generates_what_the_whole_model_does(
    method, tiny_model, tiny_folder, tiny_skeleton, generation_inputs, reference_tokens, tmp_path
):
    from transformers import InternVLForConditionalGeneration

    if method == "internvl":
        device_map = split_model(TEXT_LAYERS, devices=[0, 1], layout=layout_for_model(tiny_model))
    else:
        device_map = plan_device_map(tiny_skeleton, [0, 1], max_memory={0: 10**6, 1: 10**6})
    # GPU 1 (which holds the last layer, away from the head) becomes "disk": the loader then
    # validates every key, and the offloaded layers run through accelerate's hooks.
    assert device_map["model.language_model.layers.5"] == 1 and device_map["lm_head"] == 0
    mapped = _on_cpu_and_disk(device_map, {1})
    model = InternVLForConditionalGeneration.from_pretrained(tiny_folder, device_map=mapped,
                                                             offload_folder=str(tmp_path), dtype=torch.float32)
    check_device_map(mapped, model, allowed_devices=["cpu", "disk"])
    assert model.hf_device_map["model.language_model.layers.5"] == "disk"
    assert model.model.language_model.layers[5].mlp.down_proj.weight.device.type == "meta"  # really offloaded
    with torch.no_grad():
        tokens = model.generate(**generation_inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(tokens, reference_tokens)


def test_check_device_map_lists_unknown_keys(tiny_model):
    device_map = {**split_model(TEXT_LAYERS, devices=[0], layout="hf"), "model.language_model.layers.6": 0}
    with pytest.raises(UserError, match=r"1 key\(s\) name no module.*layers\.6"):
        check_device_map(device_map, tiny_model, allowed_devices=[0])


def test_check_device_map_lists_uncovered_parameters(tiny_model):
    device_map = split_model(TEXT_LAYERS, devices=[0], layout="hf")
    del device_map["model.multi_modal_projector"]
    with pytest.raises(UserError, match=r"no key covers: model\.multi_modal_projector\.layer_norm\.weight"):
        check_device_map(device_map, tiny_model, allowed_devices=[0])


def test_check_device_map_rejects_a_gpu_that_does_not_exist(tiny_model):
    device_map = split_model(TEXT_LAYERS, devices=[0, 1, 2, 3], layout="hf")
    with pytest.raises(UserError, match="GPU that does not exist.*layers.5 -> 3"):
        check_device_map(device_map, tiny_model, allowed_devices=[0, 1])
    check_device_map({key: f"cuda:{d}" for key, d in device_map.items()}, tiny_model, allowed_devices=range(4))


def test_check_device_map_defaults_to_the_visible_gpus(tiny_model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match="GPU that does not exist"):
        check_device_map({"": 0}, tiny_model)
    check_device_map({"": "cpu"}, tiny_model)


# ------------------------------------------------------------------------------------------
# The planner (meta skeletons, fake GPU ids, explicit capacities)


def _utilisation(plan: Plan) -> dict:
    return {d.device: d.total_bytes / d.capacity_bytes for d in plan.devices}


def _largest_layer_share(skeleton, capacity: int) -> float:
    from accelerate.utils import compute_module_sizes

    sizes = compute_module_sizes(skeleton)
    prefix = layout_for_model(skeleton)["layers_prefix"]
    return max(size for name, size in sizes.items() if re.fullmatch(rf"{re.escape(prefix)}\.\d+", name)) / capacity


def test_planner_balances_bytes_within_one_layer(wide_skeleton):
    devices, capacity = [2, 3, 5, 6], 64 << 20
    plan = make_plan(wide_skeleton, devices, {d: capacity for d in devices})
    utilisation = _utilisation(plan)
    print("\n" + format_plan(plan))
    spread = max(utilisation.values()) - min(utilisation.values())
    assert spread <= _largest_layer_share(wide_skeleton, capacity) + 1e-9, utilisation
    check_device_map(plan.device_map, wide_skeleton, allowed_devices=devices)
    # Bytes, not counts: InternVL's rule on the same GPUs leaves a wider spread.
    internvl = summarise_plan(wide_skeleton, split_model(24, devices=devices, layout="hf"), devices,
                              {d: capacity for d in devices})
    internvl_utilisation = _utilisation(internvl)
    assert spread < max(internvl_utilisation.values()) - min(internvl_utilisation.values())


def test_planner_keeps_vision_projector_embeddings_and_tied_head_on_the_first_device(wide_skeleton):
    plan = make_plan(wide_skeleton, [2, 3, 5, 6], {d: 64 << 20 for d in (2, 3, 5, 6)})
    for role in ("vision", "projector", "embeddings", "rotary", "norm", "head"):
        assert plan.device_map[LAYOUTS["hf"][role]] == 2, role
    assert set(plan.device_map.values()) == {2, 3, 5, 6}
    assert sorted(_layer_devices(plan.device_map, LAYOUTS["hf"]["layers_prefix"])) == list(range(24))


def test_planner_puts_an_untied_head_with_the_last_layer(untied_skeleton):
    plan = make_plan(untied_skeleton, [0, 1, 2], {d: 64 << 20 for d in range(3)})
    layers = _layer_devices(plan.device_map, LAYOUTS["hf"]["layers_prefix"])
    assert plan.device_map["lm_head"] == plan.device_map["model.language_model.norm"] == layers[23] == 2
    assert plan.device_map["model.language_model.embed_tokens"] == 0
    check_device_map(plan.device_map, untied_skeleton, allowed_devices=[0, 1, 2])


def test_planner_reserves_headroom(wide_skeleton):
    devices, capacity = [0, 1, 2, 3], 64 << 20
    even = make_plan(wide_skeleton, devices, {d: capacity for d in devices})
    headroom = {3: capacity // 4}
    reserved = make_plan(wide_skeleton, devices, {d: capacity for d in devices}, headroom=headroom)
    assert len(reserved.devices[3].layers) < len(even.devices[3].layers)
    assert reserved.devices[3].runtime_bytes == capacity // 4
    assert all(d.total_bytes <= d.capacity_bytes for d in reserved.devices)


def test_planner_charges_per_layer_runtime_bytes(wide_skeleton):
    devices, capacity = [0, 1], 64 << 20
    plan = make_plan(wide_skeleton, devices, {d: capacity for d in devices}, per_layer_bytes=1 << 20)
    for device in plan.devices:
        assert device.runtime_bytes == len(device.layers) << 20


def test_planner_follows_unequal_capacities(wide_skeleton):
    plan = make_plan(wide_skeleton, [0, 1, 2], {0: 64 << 20, 1: 32 << 20, 2: 64 << 20})
    assert len(plan.devices[1].layers) < len(plan.devices[2].layers)
    utilisation = _utilisation(plan)
    assert max(utilisation.values()) - min(utilisation.values()) <= 2 * _largest_layer_share(wide_skeleton, 32 << 20)


def test_a_plan_that_cannot_fit_names_the_device(wide_skeleton):
    devices = [4, 5]
    with pytest.raises(PlanDoesNotFit, match="GPU 5 needs") as caught:
        make_plan(wide_skeleton, devices, {4: 64 << 20, 5: 1 << 20})
    assert isinstance(caught.value, UserError)
    assert caught.value.plan is not None and not caught.value.plan.fits
    assert "DOES NOT FIT on GPU 5" in str(caught.value)


def test_headroom_larger_than_a_device_does_not_fit(tiny_skeleton):
    with pytest.raises(PlanDoesNotFit, match="GPU 1 needs"):
        make_plan(tiny_skeleton, [0, 1], {0: 10**7, 1: 10**7}, headroom={1: 2 * 10**7})


def test_planner_needs_a_capacity_for_every_device(tiny_skeleton):
    with pytest.raises(UserError, match=r"no capacity for GPUs \[1\]"):
        make_plan(tiny_skeleton, [0, 1], {0: 10**7})


def test_planner_on_one_device_puts_everything_there(tiny_skeleton):
    device_map = plan_device_map(tiny_skeleton, [3], {3: 10**7})
    assert set(device_map.values()) == {3}
    check_device_map(device_map, tiny_skeleton, allowed_devices=[3])


def test_planner_with_more_gpus_than_layers_leaves_the_last_ones_empty(tiny_skeleton):
    plan = make_plan(tiny_skeleton, list(range(8)), {d: 10**7 for d in range(8)})
    assert sorted(_layer_devices(plan.device_map, LAYOUTS["hf"]["layers_prefix"])) == list(range(TEXT_LAYERS))
    assert [len(d.layers) for d in plan.devices][1:] == [1] * 6 + [0]
    assert plan.notes == ("6 decoder layers cannot use 8 GPUs: the last ones stay empty",)


def test_a_model_without_a_decoder_stack_falls_back_to_accelerate():
    model = _module(encoder=nn.Linear(256, 256), decoder=nn.Linear(256, 256), extra=nn.Linear(256, 256))
    plan = make_plan(model, [0, 1], {0: 600_000, 1: 600_000})
    assert plan.fits and set(plan.device_map.values()) == {0, 1}
    check_device_map(plan.device_map, model, allowed_devices=[0, 1])
    with pytest.raises(PlanDoesNotFit, match="'disk' needs"):
        make_plan(model, [0, 1], {0: 300_000, 1: 300_000})


# ------------------------------------------------------------------------------------------
# Runtime bytes


def test_headroom_formula_on_the_tiny_config():
    config = _tiny_config()
    runtime = estimate_runtime_bytes(config, batch_size=2, tiles_per_item=3, max_new_tokens=8, dtype_bytes=2,
                                     prompt_tokens=64)
    tokens = 4 * 3 + 64 + 8  # image tokens per tile x tiles + prompt + new tokens
    kv_heads, head_dim = 2, 64 // 4
    assert runtime.kv_cache_per_layer == 2 * kv_heads * head_dim * tokens * 2 * 2
    patches = (56 // 14) ** 2 + 1
    assert runtime.vision_activations == 2 * 3 * patches * (6 * 32 + 64) * 2
    headroom = estimate_headroom(config, 2, 3, 8, 2, prompt_tokens=64)
    assert headroom == runtime.total >= TEXT_LAYERS * runtime.kv_cache_per_layer + runtime.vision_activations


def test_remote_code_config_gives_internvls_256_tokens_per_tile():
    config = {"llm_config": {"num_hidden_layers": 28, "hidden_size": 3584, "num_attention_heads": 28,
                             "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 151674},
              "vision_config": {"image_size": 448, "patch_size": 14, "hidden_size": 1024, "intermediate_size": 4096},
              "force_image_size": 448, "downsample_ratio": 0.5}
    assert image_tokens_per_tile(config) == 256
    runtime = estimate_runtime_bytes(config, batch_size=8, tiles_per_item=7, max_new_tokens=100, dtype_bytes=2)
    assert runtime.kv_cache_per_layer == 2 * 4 * 128 * (256 * 7 + 64 + 100) * 8 * 2


def test_headroom_per_device_puts_vision_and_logits_on_the_first_gpu():
    runtime = estimate_runtime_bytes(_tiny_config(), 2, 3, 8, 2)
    headroom = headroom_per_device(runtime, [4, 5])
    assert headroom[5] == runtime.llm_activations + (1 << 30)
    assert headroom[4] == headroom[5] + runtime.vision_activations + runtime.logits


@pytest.mark.parametrize("argument", ["batch_size", "tiles_per_item", "dtype_bytes"])
def test_headroom_needs_positive_sizes(argument):
    arguments = {"batch_size": 1, "tiles_per_item": 1, "max_new_tokens": 1, "dtype_bytes": 2, argument: 0}
    with pytest.raises(UserError, match=argument):
        estimate_headroom(_tiny_config(), **arguments)


# ------------------------------------------------------------------------------------------
# Skeleton and dry run


def test_skeleton_is_on_meta_with_the_head_tied(tiny_folder):
    skeleton = build_skeleton(tiny_folder)
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    assert skeleton.lm_head.weight is skeleton.model.language_model.embed_tokens.weight
    assert detect_layout(_names(skeleton)) == {**LAYOUTS["hf"], "others": ()}


def test_skeleton_of_a_text_only_checkpoint_is_a_causal_lm(tmp_path):
    from transformers import Qwen2Config

    Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=64, vocab_size=64, bos_token_id=1, eos_token_id=2).save_pretrained(tmp_path)
    skeleton = build_skeleton(tmp_path)
    assert type(skeleton).__name__ == "Qwen2ForCausalLM"
    assert detect_layout(_names(skeleton))["layers_prefix"] == "model.layers"


def test_skeleton_of_a_folder_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        build_skeleton(tmp_path)


DRY_RUN = {"batch_size": 2, "tiles": 2, "max_new_tokens": 8, "dtype_bytes": 2}


def test_dry_run_gives_one_plan_per_replica_on_consecutive_gpus(tiny_folder):
    plans = dry_run_plan(tiny_folder, gpus_per_model=2, assume_gpus=5, gpu_memory_bytes=2 << 30, **DRY_RUN)
    assert [[d.device for d in plan.devices] for plan in plans] == [[0, 1], [2, 3]]
    assert [plan.replica_index for plan in plans] == [0, 1]
    text = "\n".join(format_plan(plan) for plan in plans)
    print("\n" + text)
    assert "replica 1 on GPUs 2-3 (planner): fits" in text
    assert "1 of 5 GPUs stay idle" in text
    for plan in plans:
        assert all(d.runtime_bytes >= 1 << 30 for d in plan.devices)  # CUDA overhead reserved
        assert plan.devices[0].modules[0] == "model.vision_tower"


def test_dry_run_with_internvls_rule_uses_split_model(tiny_folder):
    plans = dry_run_plan(tiny_folder, gpus_per_model=2, assume_gpus=2, gpu_memory_bytes=2 << 30,
                         method="internvl", **DRY_RUN)
    assert plans[0].device_map == split_model(TEXT_LAYERS, devices=[0, 1], layout="hf")
    assert plans[0].method == "internvl"


def test_dry_run_that_does_not_fit_raises_with_the_table(tiny_folder):
    with pytest.raises(PlanDoesNotFit, match="GPU 0 needs") as caught:
        dry_run_plan(tiny_folder, gpus_per_model=2, assume_gpus=2, gpu_memory_bytes=1 << 30, **DRY_RUN)
    assert "GPU  layers" in str(caught.value)


def test_dry_run_with_too_few_gpus_for_one_replica_is_a_user_error(tiny_folder):
    with pytest.raises(UserError, match="--assume-gpus 2 cannot hold"):
        dry_run_plan(tiny_folder, gpus_per_model=4, assume_gpus=2, gpu_memory_bytes=2 << 30, **DRY_RUN)


def test_format_plan_shows_layers_bytes_and_capacity(tiny_skeleton):
    plan = make_plan(tiny_skeleton, [0, 1], {0: 10**6, 1: 10**6}, headroom={0: 1000})
    text = format_plan(plan)
    lines = text.splitlines()
    assert lines[0] == "replica 0 on GPUs 0-1 (planner): fits"
    assert re.match(r"\s+0\s+0-\d \(\d\)\s+[\d.]+ KiB\s+1000 B", lines[2])
    assert sum(len(d.layers) for d in plan.devices) == TEXT_LAYERS
