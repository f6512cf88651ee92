"""Our own imitation of OpenGVLab's original InternVL folders, and a plain-torch reference of their computation.

Nothing here comes from InternVL's code: the folder layout and the computation are written from the
facts of the format (config.json with `InternVLChatModel` and an `auto_map`, flat `*.py` files beside it,
sharded safetensors under the original tensor names) so that the conversion can be tested in CI:

* `build_original_folder(out, kind)`: random weights under the original names. kind "internlm2_6b":
  InternViT-6B style vision (RMSNorm, QK-norm over all heads, no qkv bias) + InternLM2 style LLM (fused,
  grouped `wqkv`, `w1/w3/w2`, `attention_norm/ffn_norm`, `tok_embeddings`, `output`), sentencepiece
  tokenizer declared as InternLM2Tokenizer, 3 shards. kind "qwen2_300m": InternViT-300M style vision
  (LayerNorm, qkv bias) trained at a smaller size than `force_image_size` (position embeddings resized
  on the fly) + Qwen2 style LLM, word-level tokenizer, one file. The `.py` files the auto_map names
  raise when imported: the conversion must never run them.
* `ReferenceInternVL(folder)`: InternVL's forward written from scratch over those tensors (no transformers
  model classes), with greedy decoding by recomputing the whole sequence each step.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

IMG_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
_RAISING_CODE = "raise RuntimeError('remote code of the imitation folder was executed')\n"

_CORPUS_WORDS = ("what which colour color is the circle square triangle how many shapes are there describe picture "
                 "a red green blue left right top bottom answer question using single word phrase image yes no "
                 "one two three big small").split()


def _vision_spec(kind: str) -> dict[str, Any]:
    if kind == "internlm2_6b":
        return dict(hidden_size=40, num_attention_heads=5, intermediate_size=64, num_hidden_layers=2,
                    qkv_bias=False, qk_normalization=True, norm_type="rms_norm", layer_norm_eps=1e-6,
                    image_size=56, patch_size=14, hidden_act="gelu", architectures=["InternVisionModel"])
    return dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2,
                qkv_bias=True, qk_normalization=False, norm_type="layer_norm", layer_norm_eps=1e-6,
                image_size=28, patch_size=14, hidden_act="gelu", architectures=["InternVisionModel"])


def _sentencepiece_tokenizer(out: Path) -> int:
    """Train a tiny sentencepiece BPE model; write InternLM2-style tokenizer files. Returns the vocab size."""
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    lines = [" ".join(rng.choice(_CORPUS_WORDS) for _ in range(rng.randint(3, 10))) + "?" for _ in range(400)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(out / "sp"), model_type="bpe", vocab_size=400,
        character_coverage=1.0, byte_fallback=True, user_defined_symbols=CHAT_TOKENS, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, add_dummy_prefix=True, normalization_rule_name="identity", minloglevel=2)
    (out / "sp.model").rename(out / "tokenizer.model")
    (out / "sp.vocab").unlink()
    processor = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    size = processor.get_piece_size()
    added = {}
    for index, token in enumerate(["<unk>", "<s>", "</s>"]):
        added[str(index)] = {"content": token, "special": True}
    for token in CHAT_TOKENS:
        added[str(processor.piece_to_id(token))] = {"content": token, "special": True}
    for offset, token in enumerate(IMG_TOKENS):
        added[str(size + offset)] = {"content": token, "special": True}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "InternLM2Tokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "added_tokens_decoder": added}, indent=1))
    (out / "tokenization_internlm2.py").write_text(_RAISING_CODE)
    return size + len(IMG_TOKENS)


def _word_level_tokenizer(out: Path) -> int:
    from launcher.tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<quad>", "</quad>"]},
                                 replace_extra_special_tokens=False)
    tokenizer.save_pretrained(out)
    return len(tokenizer)


def build_original_folder(out: str | Path, kind: str = "internlm2_6b", seed: int = 0) -> Path:
    """An original-format InternVL folder of the given kind (module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    vision = _vision_spec(kind)
    if kind == "internlm2_6b":
        vocab = _sentencepiece_tokenizer(out)
        llm = dict(architectures=["InternLM2ForCausalLM"], model_type="internlm2", vocab_size=vocab,
                   hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=96, max_position_embeddings=4096, rope_theta=1000000.0,
                   rope_scaling={"type": "dynamic", "factor": 2.0}, rms_norm_eps=1e-5, bias=False,
                   hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                   auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config",
                             "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"})
        template, force_image_size, shards = "internlm2-chat", 56, 3
    else:
        vocab = _word_level_tokenizer(out)
        llm = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=vocab, hidden_size=64,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                   max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
                   use_sliding_window=False, tie_word_embeddings=False)
        template, force_image_size, shards = "internvl2_5", 56, 1
    config = {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": template,
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                     "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"},
        "vision_config": vision, "llm_config": llm, "force_image_size": force_image_size,
        "downsample_ratio": 0.5, "ps_version": "v2", "select_layer": -1, "use_thumbnail": True,
        "dynamic_image_size": True, "max_dynamic_patch": 12, "min_dynamic_patch": 1, "use_backbone_lora": 0,
        "use_llm_lora": 0, "torch_dtype": "float32", "tie_word_embeddings": False,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
    for name in ("configuration_internvl_chat.py", "modeling_internvl_chat.py", "modeling_intern_vit.py",
                 "conversation.py"):
        (out / name).write_text(_RAISING_CODE)
    tensors = _random_weights(vision, llm, kind, generator)
    _save_shards(out, tensors, shards)
    return out


def _random_weights(vision: dict, llm: dict, kind: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    def rnd(*shape: int, std: float = 0.2, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std + mean

    weights: dict[str, torch.Tensor] = {}
    dim, layers = vision["hidden_size"], vision["num_hidden_layers"]
    grid = vision["image_size"] // vision["patch_size"]
    v = "vision_model."
    weights[v + "embeddings.class_embedding"] = rnd(1, 1, dim, std=0.5)
    weights[v + "embeddings.position_embedding"] = rnd(1, grid * grid + 1, dim, std=0.5)
    weights[v + "embeddings.patch_embedding.weight"] = rnd(dim, 3, vision["patch_size"], vision["patch_size"], std=0.05)
    weights[v + "embeddings.patch_embedding.bias"] = rnd(dim, std=0.1)
    for i in range(layers):
        p = f"{v}encoder.layers.{i}."
        weights[p + "attn.qkv.weight"] = rnd(3 * dim, dim)
        if vision["qkv_bias"]:
            weights[p + "attn.qkv.bias"] = rnd(3 * dim, std=0.1)
        if vision["qk_normalization"]:
            weights[p + "attn.q_norm.weight"] = rnd(dim, mean=1.0)
            weights[p + "attn.k_norm.weight"] = rnd(dim, mean=1.0)
        weights[p + "attn.proj.weight"] = rnd(dim, dim)
        weights[p + "attn.proj.bias"] = rnd(dim, std=0.1)
        weights[p + "mlp.fc1.weight"] = rnd(vision["intermediate_size"], dim)
        weights[p + "mlp.fc1.bias"] = rnd(vision["intermediate_size"], std=0.1)
        weights[p + "mlp.fc2.weight"] = rnd(dim, vision["intermediate_size"])
        weights[p + "mlp.fc2.bias"] = rnd(dim, std=0.1)
        for norm in ("norm1", "norm2"):
            weights[p + f"{norm}.weight"] = rnd(dim, mean=1.0)
            if vision["norm_type"] == "layer_norm":
                weights[p + f"{norm}.bias"] = rnd(dim, std=0.1)
        weights[p + "ls1"] = rnd(dim, mean=0.5)
        weights[p + "ls2"] = rnd(dim, mean=0.5)
    hidden, vocab = llm["hidden_size"], llm["vocab_size"]
    shuffled = dim * 4
    weights["mlp1.0.weight"] = rnd(shuffled, mean=1.0)
    weights["mlp1.0.bias"] = rnd(shuffled, std=0.1)
    weights["mlp1.1.weight"] = rnd(hidden, shuffled)
    weights["mlp1.1.bias"] = rnd(hidden, std=0.1)
    weights["mlp1.3.weight"] = rnd(hidden, hidden)
    weights["mlp1.3.bias"] = rnd(hidden, std=0.1)
    heads, kv_heads = llm["num_attention_heads"], llm["num_key_value_heads"]
    head_dim, inner = hidden // heads, llm["intermediate_size"]
    m = "language_model.model."
    if kind == "internlm2_6b":
        weights[m + "tok_embeddings.weight"] = rnd(vocab, hidden, std=1.0)
        for i in range(llm["num_hidden_layers"]):
            p = f"{m}layers.{i}."
            weights[p + "attention.wqkv.weight"] = rnd((heads + 2 * kv_heads) * head_dim, hidden)
            weights[p + "attention.wo.weight"] = rnd(hidden, heads * head_dim)
            weights[p + "feed_forward.w1.weight"] = rnd(inner, hidden)
            weights[p + "feed_forward.w3.weight"] = rnd(inner, hidden)
            weights[p + "feed_forward.w2.weight"] = rnd(hidden, inner)
            weights[p + "attention_norm.weight"] = rnd(hidden, mean=1.0)
            weights[p + "ffn_norm.weight"] = rnd(hidden, mean=1.0)
        weights[m + "norm.weight"] = rnd(hidden, mean=1.0)
        weights["language_model.output.weight"] = rnd(vocab, hidden)
    else:
        weights[m + "embed_tokens.weight"] = rnd(vocab, hidden, std=1.0)
        for i in range(llm["num_hidden_layers"]):
            p = f"{m}layers.{i}."
            for name, rows in (("q_proj", heads), ("k_proj", kv_heads), ("v_proj", kv_heads)):
                weights[p + f"self_attn.{name}.weight"] = rnd(rows * head_dim, hidden)
                weights[p + f"self_attn.{name}.bias"] = rnd(rows * head_dim, std=0.1)
            weights[p + "self_attn.o_proj.weight"] = rnd(hidden, heads * head_dim)
            weights[p + "mlp.gate_proj.weight"] = rnd(inner, hidden)
            weights[p + "mlp.up_proj.weight"] = rnd(inner, hidden)
            weights[p + "mlp.down_proj.weight"] = rnd(hidden, inner)
            weights[p + "input_layernorm.weight"] = rnd(hidden, mean=1.0)
            weights[p + "post_attention_layernorm.weight"] = rnd(hidden, mean=1.0)
        weights[m + "norm.weight"] = rnd(hidden, mean=1.0)
        weights["language_model.lm_head.weight"] = rnd(vocab, hidden)
    return weights


def _save_shards(out: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    names = list(tensors)
    if shards == 1:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    per_shard = math.ceil(len(names) / shards)
    for index in range(shards):
        file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[index * per_shard:(index + 1) * per_shard]}
        save_file(part, str(out / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


# ------------------------------------------------------------------------------------------------
# The reference computation


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class ReferenceInternVL:
    """InternVL's forward over an imitation folder's tensors, written from scratch (module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.config = json.loads((folder / "config.json").read_text())
        self.weights: dict[str, torch.Tensor] = {}
        for file in sorted(folder.glob("*.safetensors")):
            self.weights.update({k: v.float() for k, v in load_file(str(file)).items()})
        self.vision, self.llm = self.config["vision_config"], self.config["llm_config"]
        self.internlm2 = self.llm["architectures"][0] == "InternLM2ForCausalLM"

    def _norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        eps = self.vision["layer_norm_eps"]
        if self.vision["norm_type"] == "rms_norm":
            return _rms(x, self.weights[prefix + ".weight"], eps)
        return F.layer_norm(x, x.shape[-1:], self.weights[prefix + ".weight"], self.weights[prefix + ".bias"], eps)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        w, v = self.weights, "vision_model."
        dim, heads = self.vision["hidden_size"], self.vision["num_attention_heads"]
        x = F.conv2d(pixel_values, w[v + "embeddings.patch_embedding.weight"], w[v + "embeddings.patch_embedding.bias"],
                     stride=self.vision["patch_size"])
        side = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([w[v + "embeddings.class_embedding"].expand(x.shape[0], 1, dim), x], dim=1)
        position = w[v + "embeddings.position_embedding"]
        trained = int(math.isqrt(position.shape[1] - 1))
        grid = position[:, 1:].reshape(1, trained, trained, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        x = x + torch.cat([position[:, :1], grid.reshape(1, dim, -1).permute(0, 2, 1)], dim=1)
        for i in range(self.vision["num_hidden_layers"]):
            p = f"{v}encoder.layers.{i}."
            h = self._norm(x, p + "norm1")
            qkv = F.linear(h, w[p + "attn.qkv.weight"], w.get(p + "attn.qkv.bias"))
            q, k, val = qkv.chunk(3, dim=-1)
            if self.vision["qk_normalization"]:
                q = _rms(q, w[p + "attn.q_norm.weight"], self.vision["layer_norm_eps"])
                k = _rms(k, w[p + "attn.k_norm.weight"], self.vision["layer_norm_eps"])
            split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, dim // heads).transpose(1, 2)  # noqa: E731
            attention = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
            out = (attention @ split(val)).transpose(1, 2).reshape(x.shape)
            x = x + F.linear(out, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"]) * w[p + "ls1"]
            h = self._norm(x, p + "norm2")
            h = F.linear(F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])),
                         w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
            x = x + h * w[p + "ls2"]
        x = x[:, 1:].reshape(x.shape[0], side, side, dim)
        # Pixel shuffle (v2): each 2x2 block of the grid becomes one token, (row parity, col parity, channel).
        n = x.shape[0]
        x = x.reshape(n, side, side // 2, 2 * dim).permute(0, 2, 1, 3).reshape(n, side // 2, side // 2, 4 * dim)
        x = x.permute(0, 2, 1, 3).reshape(n, -1, 4 * dim)
        x = F.layer_norm(x, x.shape[-1:], w["mlp1.0.weight"], w["mlp1.0.bias"])
        x = F.gelu(F.linear(x, w["mlp1.1.weight"], w["mlp1.1.bias"]))
        return F.linear(x, w["mlp1.3.weight"], w["mlp1.3.bias"])

    def _attention(self, h: torch.Tensor, p: str) -> torch.Tensor:
        w, llm = self.weights, self.llm
        heads, kv_heads = llm["num_attention_heads"], llm["num_key_value_heads"]
        groups, head_dim, length = heads // kv_heads, llm["hidden_size"] // heads, h.shape[0]
        if self.internlm2:
            qkv = F.linear(h, w[p + "attention.wqkv.weight"]).reshape(length, kv_heads, groups + 2, head_dim)
            q = qkv[:, :, :groups].reshape(length, heads, head_dim)
            k, v = qkv[:, :, groups], qkv[:, :, groups + 1]
        else:
            q = F.linear(h, w[p + "self_attn.q_proj.weight"], w[p + "self_attn.q_proj.bias"]).reshape(length, heads, head_dim)
            k = F.linear(h, w[p + "self_attn.k_proj.weight"], w[p + "self_attn.k_proj.bias"]).reshape(length, kv_heads, head_dim)
            v = F.linear(h, w[p + "self_attn.v_proj.weight"], w[p + "self_attn.v_proj.bias"]).reshape(length, kv_heads, head_dim)
        inv_freq = 1.0 / (llm["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(length).float(), inv_freq)
        cos, sin = torch.cat([angles, angles], -1).cos()[:, None], torch.cat([angles, angles], -1).sin()[:, None]
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim)
        scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
        out = torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v).reshape(length, heads * head_dim)
        return F.linear(out, w[p + ("attention.wo.weight" if self.internlm2 else "self_attn.o_proj.weight")])

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        w, eps, m = self.weights, self.llm["rms_norm_eps"], "language_model.model."
        x = embeddings
        for i in range(self.llm["num_hidden_layers"]):
            p = f"{m}layers.{i}."
            if self.internlm2:
                x = x + self._attention(_rms(x, w[p + "attention_norm.weight"], eps), p)
                h = _rms(x, w[p + "ffn_norm.weight"], eps)
                x = x + F.linear(F.silu(F.linear(h, w[p + "feed_forward.w1.weight"]))
                                 * F.linear(h, w[p + "feed_forward.w3.weight"]), w[p + "feed_forward.w2.weight"])
            else:
                x = x + self._attention(_rms(x, w[p + "input_layernorm.weight"], eps), p)
                h = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
                x = x + F.linear(F.silu(F.linear(h, w[p + "mlp.gate_proj.weight"]))
                                 * F.linear(h, w[p + "mlp.up_proj.weight"]), w[p + "mlp.down_proj.weight"])
        x = _rms(x, w[m + "norm.weight"], eps)
        return F.linear(x, w["language_model.output.weight" if self.internlm2 else "language_model.lm_head.weight"])

    @torch.no_grad()
    def greedy(self, input_ids: Sequence[int], pixel_values: torch.Tensor | None, image_token_id: int,
               eos_token_id: int, max_new_tokens: int) -> list[int]:
        """New tokens for one unpadded prompt, up to and including eos."""
        table = self.weights["language_model.model." + ("tok_embeddings" if self.internlm2 else "embed_tokens") + ".weight"]
        ids, prompt_length = list(input_ids), len(input_ids)
        features = self.image_features(pixel_values).reshape(-1, table.shape[1]) if pixel_values is not None else None
        new: list[int] = []
        for _ in range(max_new_tokens):
            embeddings = table[torch.tensor(ids)].clone()
            if features is not None:
                embeddings[:prompt_length][torch.tensor(ids[:prompt_length]) == image_token_id] = features
            token = int(self.logits(embeddings)[-1].argmax())
            new.append(token)
            ids.append(token)
            if token == eos_token_id:
                break
        return new
