"""A few sampled continuations of fixed prompts: the quickest sanity check a reader can do.

One ``torch.Generator`` seeded with ``params.seed`` draws every sample, in prompt order, so the
same model and params give the same texts on the same device.
"""

from __future__ import annotations

import torch

from evaluation.lm_adapter import NativeLM
from pipeline.config import GenerationConfig


def sample_generations(lm: NativeLM, cfg: GenerationConfig, seed: int) -> list[dict]:
    """``[{"prompt", "completion"}]`` for each of ``cfg.prompts``."""
    generator = torch.Generator(device=lm.device).manual_seed(seed)
    return [
        {
            "prompt": prompt,
            "completion": lm.generate_text(
                prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k, generator=generator
            ),
        }
        for prompt in cfg.prompts
    ]


def generations_markdown(samples: list[dict], settings: GenerationConfig) -> str:
    """The samples as Markdown, for the MLflow run page."""
    lines = [
        "# Sampled generations",
        "",
        f"temperature {settings.temperature}, top_k {settings.top_k}, "
        f"max_new_tokens {settings.max_new_tokens}",
        "",
    ]
    for sample in samples:
        lines += [f"**{sample['prompt']}**{sample['completion']}", ""]
    return "\n".join(lines)
