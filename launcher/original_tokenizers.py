"""The tokenizer of an original InternVL folder, giving the ids InternVL's own loading gives.

InternVL loads tokenizers with `AutoTokenizer.from_pretrained(path, trust_remote_code=True,
use_fast=False)` under transformers 4.37: the *slow* (Python) tokenizer. Where transformers 5 would
build something else from the same files, we rebuild the 4.37 behaviour from the files themselves,
without running the folder's code:

* InternLM2 (`tokenizer_class` InternLM2Tokenizer, remote code `tokenization_internlm2.py`): the text is
  split at the added tokens of tokenizer_config.json; every other piece is encoded by the sentencepiece
  model as it is (its own dummy prefix); `<s>` first (`add_bos_token`); decoding joins special tokens
  with a space before a run of them, decodes the rest with sentencepiece and always applies the
  English clean-up of spaces before punctuation (facts from InternVL's copy of that file).
* Sentencepiece Llama tokenizers (`LlamaTokenizer` with a `tokenizer.model`: Yi for InternVL2-40B,
  Phi-3 for InternVL2-4B): transformers 4.37's slow `LlamaTokenizer`. `legacy` (True unless
  tokenizer_config.json says false): pieces encoded as they are; `legacy: false`: the model's dummy
  prefix switched off, the whole text prefixed with "▁" (dropped again when a special token follows it),
  and a piece after an added token that starts with a space encoded behind `<unk>` which is cut off
  again, so the space stays a space. bos/eos by `add_bos_token` / `add_eos_token`. transformers 5 would
  convert such a folder to a fast tokenizer instead (and cannot without `tiktoken` here).
* Anything else (Qwen2's byte-level BPE, fast-only tokenizers): transformers' class named by
  tokenizer_config.json, loaded by name so that no `auto_map` is ever consulted.

Decoding follows 4.37's slow `decode`: added tokens that are not special (and special ones past the
sentencepiece vocabulary) stand apart, joined to the text around them with spaces.
Verified locally, ids and decoded text, against InternVL's tokenizers under transformers 4.37.2
(docs/DECISIONS.md). The sentencepiece families need the `sentencepiece` and `protobuf` packages.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from launcher.errors import UserError

SPIECE_UNDERLINE = "▁"
INTERNLM2_CLASSES = ("InternLM2Tokenizer", "InternLM2TokenizerFast")
LLAMA_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast")


def tokenizer_config(folder: str | Path) -> dict[str, Any]:
    """tokenizer_config.json as a dict ({} when absent)."""
    path = Path(folder) / "tokenizer_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def tokenizer_kind(folder: str | Path) -> str:
    """"internlm2", "llama_sentencepiece" or "transformers" (module docstring)."""
    config = tokenizer_config(folder)
    name = str(config.get("tokenizer_class") or "")
    auto_map = json.dumps(config.get("auto_map") or {})
    if name in INTERNLM2_CLASSES or "tokenization_internlm2" in auto_map:
        return "internlm2"
    if name in LLAMA_CLASSES and (Path(folder) / "tokenizer.model").is_file():
        return "llama_sentencepiece"
    return "transformers"


def clean_up_spaces(text: str) -> str:
    """transformers 4.x `clean_up_tokenization`: no space before . ? ! , and English contractions."""
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(old, new)
    return text


_CLASSES: dict[str, Any] = {}


def _classes() -> dict[str, Any]:
    """The two tokenizer classes, defined on first use (they need sentencepiece)."""
    if _CLASSES:
        return _CLASSES
    try:
        import google.protobuf  # noqa: F401
        import sentencepiece  # noqa: F401
        from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
    except ImportError as error:
        raise UserError(f"this checkpoint's tokenizer is a sentencepiece model, which needs the sentencepiece and "
                        f"protobuf packages ({error}): pip install sentencepiece protobuf") from None

    class SlowSentencePieceTokenizer(SentencePieceBackend):
        """Shared parts: bos/eos rules and transformers 4.37's slow decode."""

        model_input_names = ["input_ids", "attention_mask"]

        def __init__(self, vocab_file: str, add_bos_token: bool = True, add_eos_token: bool = False,
                     **kwargs: Any) -> None:
            self.add_bos_token = add_bos_token
            self.add_eos_token = add_eos_token
            super().__init__(vocab_file=vocab_file, **kwargs)

        def build_inputs_with_special_tokens(self, token_ids_0: list[int],
                                             token_ids_1: list[int] | None = None) -> list[int]:
            bos = [self.bos_token_id] if self.add_bos_token else []
            eos = [self.eos_token_id] if self.add_eos_token else []
            output = bos + list(token_ids_0) + eos
            if token_ids_1 is not None:
                output += bos + list(token_ids_1) + eos
            return output

        def num_special_tokens_to_add(self, pair: bool = False) -> int:
            return (int(self.add_bos_token) + int(self.add_eos_token)) * (2 if pair else 1)

        def _decode(self, token_ids: Any, skip_special_tokens: bool = False,
                    clean_up_tokenization_spaces: bool | None = None,
                    spaces_between_special_tokens: bool = True, **kwargs: Any) -> str:
            if isinstance(token_ids, int):
                token_ids = [token_ids]
            special_ids = set(self.all_special_ids)
            tokens = [self.convert_ids_to_tokens(int(i)) for i in token_ids
                      if not (skip_special_tokens and int(i) in special_ids)]
            special = set(self.all_special_tokens)
            apart = (set(self._added_tokens_encoder) - special) | {
                token for token in special if self._added_tokens_encoder.get(token, -1) >= self.vocab_size}
            parts, run = [], []
            for token in tokens:
                if token in apart:
                    if run:
                        string = self.convert_tokens_to_string(run)
                        if string:
                            parts.append(string)
                        run = []
                    parts.append(token)
                else:
                    run.append(token)
            if run:
                parts.append(self.convert_tokens_to_string(run))
            text = (" " if spaces_between_special_tokens else "").join(parts)
            clean = (self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None
                     else clean_up_tokenization_spaces)
            return clean_up_spaces(text) if clean else text

    class InternLM2SentencePieceTokenizer(SlowSentencePieceTokenizer):
        """InternLM2Tokenizer's behaviour (module docstring)."""

        def __init__(self, vocab_file: str, **kwargs: Any) -> None:
            for key, value in (("unk_token", "<unk>"), ("bos_token", "<s>"), ("eos_token", "</s>"),
                               ("pad_token", "</s>"), ("clean_up_tokenization_spaces", False)):
                kwargs.setdefault(key, value)
            kwargs["legacy"] = True     # pieces encoded as they are, with the model's dummy prefix
            super().__init__(vocab_file, **kwargs)

        def convert_tokens_to_string(self, tokens: list[str]) -> str:
            special = set(self.all_special_tokens)
            text, pieces, previous_special = "", [], False
            for token in tokens:
                if token in special:
                    if not previous_special:
                        text += " "
                    text += self.sp_model.decode(pieces) + token
                    pieces, previous_special = [], True
                else:
                    pieces.append(token)
                    previous_special = False
            text += self.sp_model.decode(pieces)
            # InternLM2Tokenizer then prefixes a space and drops the first character: its test of the first
            # token compares a string with a set of ids, so it always prefixes, and the net effect is nil.
            return clean_up_spaces(text)

    class LlamaSentencePieceTokenizer(SlowSentencePieceTokenizer):
        """transformers 4.37's slow LlamaTokenizer (module docstring)."""

        def __init__(self, vocab_file: str, legacy: bool | None = None, **kwargs: Any) -> None:
            for key, value in (("unk_token", "<unk>"), ("bos_token", "<s>"), ("eos_token", "</s>"),
                               ("clean_up_tokenization_spaces", False)):
                kwargs.setdefault(key, value)
            kwargs["legacy"] = True if legacy is None else bool(legacy)
            super().__init__(vocab_file, **kwargs)

        def tokenize(self, text: str, **kwargs: Any) -> list[str]:
            if self.legacy or not text:
                return super().tokenize(text, **kwargs)
            tokens = super().tokenize(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "), **kwargs)
            if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
                tokens = tokens[1:]
            return tokens

        def convert_tokens_to_string(self, tokens: list[str]) -> str:
            tokens = list(tokens)
            if tokens and tokens[0].startswith(SPIECE_UNDERLINE):
                tokens[0] = tokens[0][1:]
            special = set(self.all_special_tokens)
            text, pieces, previous_special = "", [], False
            for index, token in enumerate(tokens):
                if token in special:
                    if not previous_special and index != 0 and self.legacy:
                        text += " "
                    text += self.sp_model.decode(pieces) + token
                    pieces, previous_special = [], True
                else:
                    pieces.append(token)
                    previous_special = False
            return text + self.sp_model.decode(pieces)

    _CLASSES.update(internlm2=InternLM2SentencePieceTokenizer, llama_sentencepiece=LlamaSentencePieceTokenizer)
    return _CLASSES


def _sentencepiece_tokenizer(folder: Path, kind: str) -> Any:
    model_file = folder / "tokenizer.model"
    if not model_file.is_file():
        raise UserError(f"--checkpoint {folder}: its sentencepiece tokenizer needs tokenizer.model, which is missing")
    config = tokenizer_config(folder)
    kwargs: dict[str, Any] = {}
    for key in ("unk_token", "bos_token", "eos_token", "pad_token", "add_bos_token", "add_eos_token",
                "clean_up_tokenization_spaces", "model_max_length", "legacy"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if value is not None:
            kwargs[key] = value
    if kind == "internlm2":
        kwargs.pop("legacy", None)
    tokenizer = _classes()[kind](str(model_file), **kwargs)
    from tokenizers import AddedToken

    added = config.get("added_tokens_decoder") or {}
    for index in sorted(added, key=int):
        spec = added[index]
        token = AddedToken(spec["content"], lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False),
                           single_word=spec.get("single_word", False), normalized=spec.get("normalized", False),
                           special=spec.get("special", True))
        tokenizer.add_tokens([token], special_tokens=bool(spec.get("special", True)))
        got = tokenizer.convert_tokens_to_ids(spec["content"])
        if got != int(index):
            raise UserError(f"--checkpoint {folder}: added token {spec['content']!r} should have id {index}, the "
                            f"rebuilt tokenizer gives {got}: use --model-code remote --trust-remote-code")
    return tokenizer


def load_original_tokenizer(folder: str | Path) -> Any:
    """The folder's tokenizer with InternVL's (transformers 4.37 slow) behaviour; never runs its code."""
    folder = Path(folder)
    kind = tokenizer_kind(folder)
    if kind != "transformers":
        return _sentencepiece_tokenizer(folder, kind)
    import transformers

    name = str(tokenizer_config(folder).get("tokenizer_class") or "")
    # Slow and fast classes of one family give the same ids in transformers 5 (one class per family).
    tokenizer_class = getattr(transformers, name, None) or getattr(transformers, name.removesuffix("Fast"), None)
    if tokenizer_class is None:
        tokenizer_class = transformers.PreTrainedTokenizerFast
        if not (folder / "tokenizer.json").is_file():
            raise UserError(f"--checkpoint {folder}: tokenizer class {name!r} is unknown to transformers "
                            f"{transformers.__version__} and there is no tokenizer.json: use --model-code remote "
                            f"--trust-remote-code")
    return tokenizer_class.from_pretrained(str(folder))
