"""Generation settings shared by every adapter (greedy by default, as InternVL's scripts)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 10
    num_beams: int = 1
    temperature: float = 0.0
    seed: int = 0
    static_cache: bool = False       # generate(cache_implementation="static"): compiled decode, see bench/RESULTS.md
    decode: str = "auto"             # "auto": launcher.fast_decode for greedy runs where supported; "generate"

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    @property
    def fast_greedy(self) -> bool:
        """Whether our greedy loop may replace `generate` (`launcher.fast_decode`): greedy, no beams, and
        neither `--decode generate` nor `--static-cache` (which asks for transformers' own compiled path)."""
        return self.decode == "auto" and not self.do_sample and self.num_beams == 1 and not self.static_cache

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `model.generate` / InternVL's `generation_config`."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            kwargs["temperature"] = self.temperature
        if self.static_cache:
            kwargs["cache_implementation"] = "static"
        return kwargs

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
