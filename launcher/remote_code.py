"""InternVL's original remote code (written for transformers 4.37-4.4x) under transformers 5.x.

An original InternVL folder ships `modeling_internvl_chat.py`, `modeling_intern_vit.py`, ... and, for
InternLM2-based models, `modeling_internlm2.py` with a sentencepiece tokenizer. `loading.py` runs that
code only with `--trust-remote-code` on the remote path (`--model-code remote`, or a family the native
conversion does not cover); this module is what makes it run there, on transformers 5.17 and 5.2x:

| what breaks on 5.x | where | what we do |
| --- | --- | --- |
| a package the code imports is missing (`einops`, `timm`, `sentencepiece`): transformers checks only the entry file, so a missing import in `modeling_intern_vit.py` surfaced as a raw `ModuleNotFoundError` | before loading | `check_code_imports`: every file the folder's `auto_map`s reach (relative imports followed) is read with `ast`; what fails to import is one UserError naming the packages, the files and the pip command; transformers modules that 5.x removed (InternVL's `modeling_phi3.py`) are named as such |
| 5.17 builds a default config (`InternVLChatConfig()`), and InternVL's config class raises `Unsupported architecture: ` for its own default `llm_config={'architectures': ['']}` | config construction | `default_subconfigs`: a missing `llm_config` means the folder's own LLM architecture |
| code from before InternVL's August 2025 change has no `self.post_init()` in `InternVLChatModel.__init__`; 5.x's loading then fails on `all_tied_weights_keys` | model construction | `ensure_post_init`: `__init__` is followed by `post_init()` when InternVL's did not call it |
| 5.x's `PreTrainedModel` has no `generate` (InternLM2ForCausalLM in remote code) | after loading | `loading.ensure_generate` (GenerationMixin mixed into the instance's class) |
| 5.2x's `generate` hands the KV cache over as `cache=`; InternLM2's `prepare_inputs_for_generation` reads `past_key_values` (so it re-sent the whole prompt at step 2: `size of tensor a (92) must match ... (91)`); 5.x also passes whole-sequence `position_ids`, which that code does not slice | after loading | `bridge_legacy_cache`: the method gets the cache as `past_key_values` (the empty cache object of step 1 as None) and no `position_ids` (it derives them from the mask, as under 4.x) |
| 5.x's loading builds the model on the meta device and leaves buffers that are not in the checkpoint uninitialised: InternLM2's rotary `inv_freq`, `cos_cached`, `sin_cached` | after loading | `recompute_buffers`: each parameter-free remote module with such buffers is built again on the CPU from its own constructor (arguments read back from its attributes) and its buffers copied over |

Each fix touches only classes and instances of the folder's own remote code (never transformers'
classes), is a no-op for code that needs none of it (InternVL's current code over Qwen2), and leaves
InternVL's `chat` / `batch_chat` working on the returned model.
"""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from launcher.errors import UserError

# Module name -> what to pip install, where they differ (or are worth a word).
PIP_NAMES = {
    "PIL": "pillow",
    "cv2": "opencv-python",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "google": "protobuf",
    "skimage": "scikit-image",
}
# Always present where the launcher runs (its own requirements), or part of the code's own folder.
_PROVIDED = {"torch", "transformers", "accelerate", "safetensors", "tokenizers", "huggingface_hub", "numpy",
             "packaging", "tqdm", "regex", "filelock", "requests"}


# ------------------------------------------------------------------------------------------------
# Which packages the folder's code imports, and which of them are missing
# ------------------------------------------------------------------------------------------------

def code_entry_files(path: Path, config: dict[str, Any]) -> list[Path]:
    """The .py files config.json's and tokenizer_config.json's `auto_map`s name (model, config, tokenizer)."""
    names: list[str] = []
    maps = [config.get("auto_map") or {}]
    tokenizer_config = path / "tokenizer_config.json"
    if tokenizer_config.is_file():
        try:
            maps.append(json.loads(tokenizer_config.read_text()).get("auto_map") or {})
        except (OSError, ValueError):
            pass
    for auto_map in maps:
        for value in auto_map.values():
            for reference in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(reference, str) and "." in reference:
                    # "module.Class", or "repo--module.Class" for code that lives in another repository
                    names.append(reference.split("--")[-1].rsplit(".", 1)[0])
    files = []
    for name in dict.fromkeys(names):
        file = path / f"{name.replace('.', '/')}.py"
        if file.is_file():
            files.append(file)
    return files


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits inside a `try:` body (the code copes with its absence, e.g. flash_attn)."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            return True
        child, parent = parent, parents.get(parent)
    return False


def file_imports(file: Path) -> tuple[set[str], set[str]]:
    """(absolute module names, relative module names) that `file` imports outside try blocks."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    modules: set[str] = set()
    relative: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if not _guarded(node, parents):
                modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.module:
                    relative.add(node.module)
                else:
                    relative.update(alias.name for alias in node.names)
            elif node.module and not _guarded(node, parents):
                modules.add(node.module)
    return modules, relative


def code_imports(path: Path, config: dict[str, Any]) -> dict[str, list[str]]:
    """Imported module (absolute, dotted) -> the folder's files that import it, over every file the
    auto_maps reach (relative imports followed)."""
    users: dict[str, list[str]] = {}
    pending = code_entry_files(path, config)
    seen: set[Path] = set()
    while pending:
        file = pending.pop()
        if file in seen:
            continue
        seen.add(file)
        try:
            modules, relative = file_imports(file)
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue  # transformers will report a broken file itself
        for module in modules:
            users.setdefault(module, []).append(file.name)
        for module in relative:
            candidate = path / f"{module.replace('.', '/')}.py"
            if candidate.is_file():
                pending.append(candidate)
    return {module: sorted(files) for module, files in users.items()}


def missing_code_packages(imports: dict[str, list[str]]) -> dict[str, str]:
    """What cannot be imported here -> why: a package ('' when it is not installed at all, 'needs X'
    when a dependency of it is missing), or a transformers module this transformers no longer has."""
    import transformers

    missing: dict[str, str] = {}
    for package in sorted({module.split(".")[0] for module in imports}):
        if package in _PROVIDED or package in sys.stdlib_module_names or package == "__future__":
            continue
        try:
            importlib.import_module(package)
        except ModuleNotFoundError as error:
            missing[package] = "" if error.name in (package, None) else f"needs {error.name}"
        except Exception as error:  # noqa: BLE001 - a package that is installed but broken
            missing[package] = f"installed, but importing it fails: {type(error).__name__}: {error}"
    for module in sorted(imports):
        if module.startswith("transformers."):
            # Imported, not looked up: transformers keeps some modules as aliases without a spec.
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as error:
                if error.name and module.startswith(error.name):
                    missing[module] = f"not in transformers {transformers.__version__}"
            except Exception:  # noqa: BLE001 - present but failing: transformers will say why
                pass
    return missing


def check_code_imports(path: Path, config: dict[str, Any], *, flag_hint: str = "") -> None:
    """UserError naming what the folder's own code imports and this environment lacks."""
    imports = code_imports(path, config)
    missing = missing_code_packages(imports)
    if not missing:
        return
    users = {name: sorted({file for module, files in imports.items()
                           if module == name or module.startswith(name + ".") for file in files})
             for name in missing}
    parts, to_install, outdated = [], [], False
    for name, reason in missing.items():
        parts.append(f"{name} ({', '.join(users[name])}{'; ' + reason if reason else ''})")
        if name.startswith("transformers."):
            outdated = True
        elif not reason:
            to_install.append(PIP_NAMES.get(name, name))
        elif reason.startswith("needs "):
            dependency = reason.split(" ", 1)[1].split(".")[0]
            to_install.append(PIP_NAMES.get(dependency, dependency))
    advice = []
    if to_install:
        advice.append(f"install them (pip install {' '.join(dict.fromkeys(to_install))})")
    if outdated:
        advice.append("this code was written for an older transformers and cannot run on this one")
    if not advice:
        advice.append("reinstall them")
    raise UserError(f"--checkpoint {path}: its own model code imports what this environment lacks: "
                    f"{', '.join(parts)}. {'; '.join(advice).capitalize()}{flag_hint}")


# ------------------------------------------------------------------------------------------------
# Classes of the folder's code, patched before anything is built
# ------------------------------------------------------------------------------------------------

def remote_class(path: Path, reference: str) -> type:
    """The class an `auto_map` entry names, imported the way transformers imports it."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    return get_class_from_dynamic_module(reference, str(path))


def default_subconfigs(config_class: type, config: dict[str, Any]) -> bool:
    """Give a composite config class the folder's own sub-config architectures as defaults.

    transformers 5.17 builds a default instance (`InternVLChatConfig()`); InternVL's class turns a
    missing `llm_config` into `{'architectures': ['']}` and raises `Unsupported architecture: `. With
    this, a missing `llm_config` (or one without architectures) means the folder's own LLM, which is
    what InternVL's later code does with a fixed default. Returns whether the class was patched now.
    """
    if "_launcher_default_subconfigs" in vars(config_class):
        return False
    parameters = inspect.signature(config_class.__init__).parameters
    defaults = {}
    for name in ("llm_config", "text_config"):
        sub = config.get(name)
        if name in parameters and isinstance(sub, dict) and sub.get("architectures"):
            defaults[name] = {"architectures": list(sub["architectures"])}
    if not defaults:
        return False
    original_init = config_class.__init__
    signature = inspect.signature(original_init)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind_partial(self, *args, **kwargs)
        for name, default in defaults.items():
            value = bound.arguments.get(name)
            if value is None or (isinstance(value, dict) and not any(value.get("architectures") or [])):
                bound.arguments[name] = {**(value or {}), **default}
        original_init(*bound.args, **bound.kwargs)

    __init__.__wrapped__ = original_init  # type: ignore[attr-defined]
    config_class.__init__ = __init__
    config_class._launcher_default_subconfigs = defaults
    return True


def ensure_post_init(model_class: type) -> bool:
    """Make `model_class(config)` end with `post_init()` where InternVL's `__init__` does not call it.

    transformers 5.x keeps what post_init sets up (`all_tied_weights_keys`, parallel plans, ...) on the
    instance and reads it while loading; InternVL added the call in August 2025 (InternVL commit
    eecca2a), so older folders fail with "no attribute 'all_tied_weights_keys'". Returns whether the
    class was patched now.
    """
    if "_launcher_ensures_post_init" in vars(model_class):
        return False
    original_init = model_class.__init__
    original_post_init = model_class.post_init

    def post_init(self: Any) -> Any:
        self.__dict__["_launcher_post_init_done"] = True
        return original_post_init(self)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if not self.__dict__.get("_launcher_post_init_done"):
            self.post_init()

    __init__.__wrapped__ = original_init  # type: ignore[attr-defined]
    model_class.post_init = post_init
    model_class.__init__ = __init__
    model_class._launcher_ensures_post_init = True
    return True


def prepare_remote_classes(path: Path, config: dict[str, Any]) -> tuple[type | None, Any]:
    """The folder's model class (patched) and its config object, built by its own config class (patched).

    (None, None) when config.json's auto_map names no AutoConfig / AutoModel (then transformers'
    Auto classes do what they do).
    """
    auto_map = config.get("auto_map") or {}
    config_reference = auto_map.get("AutoConfig")
    model_reference = next((auto_map[name] for name in ("AutoModel", "AutoModelForCausalLM",
                                                        "AutoModelForImageTextToText") if name in auto_map), None)
    if not isinstance(config_reference, str) or not isinstance(model_reference, str):
        return None, None
    config_class = remote_class(path, config_reference)
    default_subconfigs(config_class, config)
    config_object = config_class.from_pretrained(str(path))
    model_class = remote_class(path, model_reference)
    ensure_post_init(model_class)
    return model_class, config_object


# ------------------------------------------------------------------------------------------------
# The loaded model, repaired
# ------------------------------------------------------------------------------------------------

def is_remote_module(module: Any) -> bool:
    """Whether `module`'s class comes from a folder's own code (transformers' dynamic modules)."""
    return type(module).__module__.startswith("transformers_modules")


def bridge_legacy_cache(model: Any) -> list[str]:
    """Let remote LLMs written for legacy caches take part in transformers 5's `generate`.

    5.2x passes the cache to `prepare_inputs_for_generation` as `cache=` (5.1x: `past_key_values=`, an
    empty `DynamicCache` at the first step); InternLM2's own method reads `past_key_values` and indexes
    it as legacy tuples, and its forward returns legacy tuples (which 5.x hands back the next step).
    5.x's generate also keeps position ids for the whole sequence in its kwargs, which such code takes
    as given and does not slice (4.x passed none: the code derives them from the attention mask). The
    wrapper gives the method the cache under `past_key_values`, with an empty cache object as None, and
    no position ids, so the first step feeds the prompt, later steps the new token only, at the
    positions 4.x used. Returns the names of the modules patched.
    """
    from transformers.cache_utils import Cache

    patched = []
    for name, module in model.named_modules():
        owner = next((cls for cls in type(module).__mro__ if "prepare_inputs_for_generation" in vars(cls)), None)
        if owner is None or not owner.__module__.startswith("transformers_modules") or \
                "_launcher_cache_bridge" in vars(module):
            continue   # transformers' own method (it knows 5.x's cache), or patched already
        own = vars(owner)["prepare_inputs_for_generation"]
        parameters = inspect.signature(own).parameters
        if "cache" in parameters or "past_key_values" not in parameters:
            continue
        original = module.prepare_inputs_for_generation

        # generate() reads the signature (it checks for `inputs_embeds`): keep the original's.
        @functools.wraps(original)
        def prepare_inputs_for_generation(input_ids: Any, *args: Any, _original: Any = original,
                                          **kwargs: Any) -> Any:
            cache = kwargs.pop("cache", None)
            # 5.x's generate keeps position ids of the whole sequence in its kwargs; code written for 4.x
            # slices only the ids it derives from the attention mask itself (as 4.x never passed any).
            kwargs.pop("position_ids", None)
            if kwargs.get("past_key_values") is None:
                kwargs["past_key_values"] = cache
            past = kwargs["past_key_values"]
            if isinstance(past, Cache):
                kwargs["past_key_values"] = None if past.get_seq_length() == 0 else _legacy(past)
            return _original(input_ids, *args, **kwargs)

        module.prepare_inputs_for_generation = prepare_inputs_for_generation
        module.__dict__["_launcher_cache_bridge"] = True
        patched.append(name or "<model>")
    return patched


def _legacy(cache: Any) -> tuple:
    """A filled Cache object as the legacy ((key, value), ...) tuples remote code indexes."""
    if hasattr(cache, "to_legacy_cache"):
        return cache.to_legacy_cache()
    return tuple((layer.keys, layer.values) for layer in cache.layers)


def _twin(module: Any) -> Any | None:
    """A fresh instance of `module`'s class built from its own attributes, or None if that cannot be
    done (a constructor argument that is not kept as an attribute of the same name)."""
    cls = type(module)
    arguments = {}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name == "device":
            arguments[name] = "cpu"
        elif name in module.__dict__ or hasattr(module, name):
            arguments[name] = getattr(module, name)
        elif parameter.default is parameter.empty:
            return None
    try:
        return cls(**arguments)
    except Exception:  # noqa: BLE001 - a module we cannot rebuild is left as loaded
        return None


def recompute_buffers(model: Any, dtype: Any) -> list[str]:
    """Rebuild the non-persistent buffers of remote-code modules that own no parameters.

    transformers 5.x loads on the meta device and materialises such buffers (not in the checkpoint)
    uninitialised; InternLM2's rotary embedding computes `inv_freq` / `cos_cached` / `sin_cached` in
    `__init__`. Each such module is built again on the CPU (default dtype = the model's dtype, as
    transformers 4.x built it) and its buffers copied to where the loaded ones live. Returns the
    names of the modules rebuilt.
    """
    import torch

    rebuilt = []
    for name, module in model.named_modules():
        if not is_remote_module(module) or any(True for _ in module.parameters(recurse=False)):
            continue
        transient = [key for key in module._buffers if key in module._non_persistent_buffers_set
                     and module._buffers[key] is not None]
        if not transient:
            continue
        previous = torch.get_default_dtype()
        try:
            if dtype is not None and dtype.is_floating_point:
                torch.set_default_dtype(dtype)
            with torch.device("cpu"):
                twin = _twin(module)
        finally:
            torch.set_default_dtype(previous)
        if twin is None:
            continue
        fresh = {key: twin._buffers.get(key) for key in transient}
        # A twin whose buffers do not have the loaded ones' shapes was not built like the original.
        if any(value is None or value.shape != module._buffers[key].shape for key, value in fresh.items()):
            continue
        for key, value in fresh.items():
            module._buffers[key] = value.to(module._buffers[key].device)
        rebuilt.append(name)
    return rebuilt


# ------------------------------------------------------------------------------------------------
# What loading.py calls
# ------------------------------------------------------------------------------------------------

def prepare_remote_code(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Before `from_pretrained` of a folder with its own code: check its imports (UserError), patch its
    classes, and return the `from_pretrained` keyword arguments that go with them (`config`)."""
    is_original = "InternVLChatModel" in (config.get("architectures") or [])
    hint = ("; or let the launcher convert it to transformers' native InternVL (--model-code native), "
            "which runs none of this code" if is_original else "")
    check_code_imports(path, config, flag_hint=hint)
    try:
        _, config_object = prepare_remote_classes(path, config)
    except ImportError as error:   # a package check_code_imports cannot see (imported dynamically)
        raise UserError(f"--checkpoint {path}: its own model code cannot be imported here: {error}") from None
    return {"config": config_object} if config_object is not None else {}


def repair_remote_model(model: Any, dtype: Any) -> dict[str, list[str]]:
    """After loading a folder with its own code: the fixes of the module docstring that apply to this
    model (its caches, its buffers). Returns what was done, by fix, for the log and the tests."""
    return {"bridged_cache": bridge_legacy_cache(model), "rebuilt_buffers": recompute_buffers(model, dtype)}
