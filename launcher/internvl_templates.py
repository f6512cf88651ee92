"""InternVL's conversation templates, for prompts built without the checkpoint's own code.

An original InternVL folder names its template in config.json (`template`); InternVL's
`conversation.py` (shipped in the folder, run only as remote code) turns a question into the prompt.
This module is our own implementation of the templates the released checkpoints use, written from
the facts of that file (OpenGVLab/InternVL, internvl_chat/internvl/conversation.py), so the converted
native model sees the same text without running any code from the folder.

All of them use InternVL's "MPT" separator style:

    prompt = system_template.format(system_message) + sep
             + for each (role, message): role + message + sep   (a message that is empty or None: role only)

so one question becomes `system + sep + user_role + question + sep + assistant_role`, and generation
stops at the token `sep.strip()` (InternVL's `chat` / `batch_chat` pass exactly that as `eos_token_id`).

| template | checkpoints (examples) | system | roles | sep |
| --- | --- | --- | --- | --- |
| `Hermes-2` | InternVL2-1B, -40B, -76B; InternVL-Chat-V1-2 | `<|im_start|>system\\n` + message | `<|im_start|>user\\n`, `<|im_start|>assistant\\n` | `<|im_end|>` |
| `internlm2-chat` | InternVL2-2B, -8B, -26B; InternVL-Chat-V1-5 | as Hermes-2 | as Hermes-2 | `<|im_end|>` |
| `phi3-chat` | InternVL2-4B; Mini-InternVL-Chat-4B-V1-5 | `<|system|>\\n` + message | `<|user|>\\n`, `<|assistant|>\\n` | `<|end|>` |
| `internvl2_5` | InternVL2.5, InternVL3, InternVL3.5 (Qwen3) | as Hermes-2, another default message | as Hermes-2 | `<|im_end|>\\n` |

The system message: InternVL's model uses config.json's `system_message` when the key is there (even
an empty one), else the template's default; `system_message_for` does the same.
Templates of other styles (`internvl_zh` of InternVL-Chat-V1-1, the GPT-OSS template of InternVL3.5-GPT-OSS)
are not implemented: such checkpoints are not converted (`launcher.internvl_conversion` says so).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

# The two default system messages of InternVL's templates (Chinese, as InternVL ships them).
_SYSTEM_INTERNVL2 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
_SYSTEM_INTERNVL2_5 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

IMAGE_PLACEHOLDER = "<image>"
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"


@dataclass(frozen=True)
class ConversationTemplate:
    """One of InternVL's MPT-style templates (module docstring)."""

    name: str
    system_template: str
    system_message: str
    user_role: str
    assistant_role: str
    sep: str

    @property
    def stop_text(self) -> str:
        """The text of the token that ends an answer (`sep.strip()`, InternVL's eos for chat)."""
        return self.sep.strip()

    def prompt(self, question: str, system_message: str | None = None) -> str:
        """The prompt for one user turn and the assistant's turn to come (InternVL's `get_prompt`)."""
        system = self.system_message if system_message is None else system_message
        text = self.system_template.format(system_message=system) + self.sep
        # InternVL appends a message only when it is truthy; an empty question leaves the role alone.
        text += self.user_role + (question + self.sep if question else "")
        return text + self.assistant_role


TEMPLATES: dict[str, ConversationTemplate] = {
    template.name: template for template in (
        ConversationTemplate("Hermes-2", "<|im_start|>system\n{system_message}", _SYSTEM_INTERNVL2,
                             "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"),
        ConversationTemplate("internlm2-chat", "<|im_start|>system\n{system_message}", _SYSTEM_INTERNVL2,
                             "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"),
        ConversationTemplate("phi3-chat", "<|system|>\n{system_message}", _SYSTEM_INTERNVL2,
                             "<|user|>\n", "<|assistant|>\n", "<|end|>"),
        ConversationTemplate("internvl2_5", "<|im_start|>system\n{system_message}", _SYSTEM_INTERNVL2_5,
                             "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n"),
    )
}


def get_template(name: str | None) -> ConversationTemplate | None:
    """The template called `name` in config.json, or None when this module does not implement it."""
    return TEMPLATES.get(name or "")


def system_message_for(config: Mapping[str, Any], template: ConversationTemplate) -> str:
    """The system message InternVL's model uses: config.json's `system_message` if present, else the template's."""
    if "system_message" in config and config["system_message"] is not None:
        return str(config["system_message"])
    return template.system_message


def build_query(template: ConversationTemplate, system_message: str, prompt: str,
                num_patches_list: Sequence[int], num_image_token: int) -> str:
    """InternVL's query for one item: the template's prompt with each `<image>` replaced, in order, by
    `<img>` + `<IMG_CONTEXT>` x (num_image_token x that image's tiles) + `</img>`."""
    from launcher.adapters import internvl_question   # one copy of InternVL's <image> placement rule

    query = template.prompt(internvl_question(prompt, len(num_patches_list)), system_message)
    for num_patches in num_patches_list:
        image_tokens = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (num_image_token * num_patches) + IMG_END_TOKEN
        query = query.replace(IMAGE_PLACEHOLDER, image_tokens, 1)
    return query
