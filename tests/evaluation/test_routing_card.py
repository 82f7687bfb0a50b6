"""The model card's routing section: a subsection for each analysis that ran, none for one
that was skipped, every plot under its own analysis."""

from __future__ import annotations

from types import SimpleNamespace

from evaluation.card import _routing
from pipeline.config import ModelConfig

MODEL = ModelConfig.model_validate({"moe": {"num_experts": 8, "top_k": 2}})
PLOTS = [
    "plots/coactivation/layer0.png",
    "plots/expert_load.png",
    "plots/saturation/saturation.png",
    "plots/vocabulary/vocabulary.png",
]
METRICS = {
    "routing/tokens": 4096,
    "routing/layer0/max_over_mean": 1.5,
    "routing/layer0/cv": 0.25,
    "routing/layer0/entropy": 1.9,
    "routing/layer0/dropped_fraction": 0.0,
    "routing/saturation/tokens": 1024,
    "routing/saturation/at_10pct": 0.375,
    "routing/layer0/saturation/at_10pct": 0.375,
    "routing/saturation/at_50pct": 0.625,
    "routing/layer0/saturation/at_50pct": 0.625,
    "routing/layer0/coactivation/max": 0.5,
    "routing/vocab/token_ids": 12,
    "routing/layer0/vocab/top_share": 0.75,
    "routing/layer0/vocab/top_share_shuffled": 0.3,
}


def section(metrics: dict, plots: list[str]) -> str:
    return _routing(SimpleNamespace(eval_metrics=metrics, model=MODEL, plots=plots))


def test_each_analysis_that_ran_has_its_subsection_and_plots():
    text = section(METRICS, PLOTS)
    assert "| layer0 | 1.5 | 0.25 | 1.9 | 0.375 | 0.625 | 0.5 | 0.75 (0.3) |" in text
    assert "saturation at 10 % | saturation at 50 %" in text
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    assert headings == [
        "### Expert load",
        "### Router saturation",
        "### Expert co-activation",
        "### Vocabulary specialisation",
    ]  # no domains, no word categories: those analyses did not run
    for heading, plot in [
        ("### Router saturation", "plots/saturation/saturation.png"),
        ("### Expert co-activation", "plots/coactivation/layer0.png"),
        ("### Vocabulary specialisation", "plots/vocabulary/vocabulary.png"),
    ]:
        after = text.split(heading)[1].split("### ")[0]
        assert f"![{plot}]({plot})" in after
    assert "10 %: 0.375, 50 %: 0.625" in text
    assert "(k-1)/(E-1) = 0.143" in text and "k/E = 2/8 = 0.250" in text


def test_word_categories_and_domains_appear_when_measured():
    metrics = METRICS | {
        "routing/tokens/noun": 100,
        "routing/domains": 3,
        "routing/layer0/domain/top_share": 0.5,
        "routing/layer0/domain/top_share_shuffled": 0.3,
    }
    text = section(metrics, [*PLOTS, "plots/specialisation/layer0.png"])
    assert "### Domain specialisation" in text and "(3 domains among" in text
    assert "![plots/specialisation/layer0.png]" in text.split("### Word categories")[1]
