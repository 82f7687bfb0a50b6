"""The evaluate stage's routing analyses: one forward pass of the final model over the test
tokens (:mod:`evaluation.routing_trace`) feeds them all; each training snapshot adds one pass.

=========================  ==========================  ===================  ====================
analysis                   module                      in ``plots/eval/``   runs when
=========================  ==========================  ===================  ====================
load, entropy, dropped     ``routing_report``          ``expert_load.*``    always
router saturation          ``routing_saturation``      ``saturation/``      train kept snapshots
expert co-activation       ``routing_coactivation``    ``coactivation/``    top-k ≥ 2
domain specialisation      ``routing_domains``         ``domains/``         ≥ 2 domains
vocabulary specialisation  ``routing_vocabulary``      ``vocabulary/``      a frequent token id
word categories            ``routing_categories``      ``specialisation/``  the corpus tags words
=========================  ==========================  ===================  ====================

Saturation, co-activation, domain and vocabulary specialisation follow the analyses of OLMoE
(Muennighoff et al. 2024, "OLMoE: Open Mixture-of-Experts Language Models", arXiv:2409.02060,
§5), which need no word lexicon, so they mean the same on any corpus. Each analysis owns its
directory: emptied first, so one skipped this time (the log says why) leaves no stale files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from evaluation.plots import fresh_dir
from evaluation.routing_categories import CategoryRouting
from evaluation.routing_coactivation import CoActivation
from evaluation.routing_domains import DomainRouting, TokenDomains
from evaluation.routing_report import LoadReport
from evaluation.routing_saturation import RouterSaturation, percent
from evaluation.routing_trace import RoutingTrace, trace_routing
from evaluation.routing_vocabulary import VocabularyRouting
from pipeline.config import EvaluateConfig
from pipeline.data.word_categories import WordCategories
from pipeline.errors import PipelineError
from pipeline.model import MoETransformer
from pipeline.model_io import load_model, read_model_config
from pipeline.paths import ModelFiles

log = logging.getLogger(__name__)

ANALYSES = ("saturation", "coactivation", "domains", "vocabulary", "specialisation")  # directories


@dataclass(frozen=True)
class RoutingWindows:
    """The test tokens every traced model routes: the same windows, in the same order."""

    tokens: np.ndarray
    window: int
    max_tokens: int
    batch_size: int
    device: torch.device

    def trace(self, model: MoETransformer, desc: str = "routing") -> RoutingTrace:
        return trace_routing(
            model, self.tokens, self.window, self.max_tokens, self.batch_size, self.device, desc
        )


def analyse_routing(
    model: MoETransformer,
    windows: RoutingWindows,
    cfg: EvaluateConfig,
    snapshots: Mapping[float, ModelFiles],
    tok_bytes: Sequence[bytes],
    words: WordCategories,
    domains: TokenDomains,
    out_dir: Path,
) -> dict[str, float]:
    """Run every analysis that applies, write its files under ``out_dir``; return the flat
    ``routing/...`` metrics."""
    started = time.perf_counter()
    trace = windows.trace(model)
    report = LoadReport.from_trace(trace)
    report.write(out_dir)
    metrics = report.metrics()
    traced = snapshots_traced = time.perf_counter()
    if not trace.expert_ids:
        log.info("routing: the model has no MoE layer: nothing routed, nothing to analyse")
        analyses = dict.fromkeys(ANALYSES)
    else:
        analyses = {
            "saturation": _saturation(trace, model, windows, snapshots, cfg.routing_snapshot_tokens)
        }
        snapshots_traced = time.perf_counter()
        analyses |= {
            "coactivation": CoActivation.from_trace(trace)
            if trace.top_k > 1
            else _skip("co-activation", "top-1 routing chooses one expert per token"),
            "domains": _domains(trace, domains),
            "vocabulary": _vocabulary(trace, tok_bytes, cfg),
            "specialisation": CategoryRouting.from_trace(trace, windows.tokens, tok_bytes, words)
            if words.words
            else _skip("word-category", "the corpus source tags no words with categories"),
        }
    for name in ANALYSES:
        directory = fresh_dir(out_dir / name)
        if analyses[name] is not None:
            metrics.update(analyses[name].metrics())
            analyses[name].write(directory)
    done = time.perf_counter()
    log.info(
        "routing analysed in %.1f s: the final model's pass %.1f s, %d snapshot pass(es) %.1f s, "
        "the analyses and their files %.1f s",
        done - started,
        traced - started,
        len(snapshots),
        snapshots_traced - traced,
        done - snapshots_traced,
    )
    return metrics


def _skip(analysis: str, reason: str) -> None:
    log.info("routing: no %s analysis: %s", analysis, reason)


def _saturation(
    trace: RoutingTrace,
    model: MoETransformer,
    windows: RoutingWindows,
    snapshots: Mapping[float, ModelFiles],
    max_tokens: int,
) -> RouterSaturation | None:
    if not snapshots:
        return _skip("saturation", "no training snapshot (train.monitor.snapshot_fractions)")
    fewer = replace(windows, max_tokens=min(windows.max_tokens, max_tokens))
    earlier = {}
    for fraction, files in snapshots.items():
        if read_model_config(files) != (model.cfg, model.vocab_size):
            raise PipelineError(
                f"{files.config}: the snapshot is not of the final model's spec (another "
                "training run's?): re-run the train stage"
            )
        snapshot = load_model(files, windows.device)
        earlier[fraction] = fewer.trace(snapshot, f"routing at {percent(fraction)} %")
    return RouterSaturation.from_traces(trace, earlier)


def _domains(trace: RoutingTrace, domains: TokenDomains) -> DomainRouting | None:
    present = len(np.unique(domains.of_token[trace.positions_N]))
    if present < 2:
        return _skip("domain", f"{present} domain among the analysed tokens: nothing to compare")
    return DomainRouting.from_trace(trace, domains)


def _vocabulary(
    trace: RoutingTrace, tok_bytes: Sequence[bytes], cfg: EvaluateConfig
) -> VocabularyRouting | None:
    vocabulary = VocabularyRouting.from_trace(
        trace, tok_bytes, cfg.routing_vocab_tokens, cfg.routing_vocab_min_count
    )
    if not len(vocabulary.token_ids):
        return _skip(
            "vocabulary",
            f"no token id occurs {cfg.routing_vocab_min_count} times "
            "(evaluate.routing_vocab_min_count)",
        )
    return vocabulary
