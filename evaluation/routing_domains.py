"""Domain specialisation: how each source domain of the test split is routed (OLMoE §5).

Every document carries a ``domain`` label written by prepare (a source file, a dataset column,
a kind of synthetic document). :func:`token_domains` gives every token of the test token file
its document's domain; per MoE layer, each domain's **share** of expert ``e`` is the fraction of
its tokens routed to ``e`` (:mod:`evaluation.routing_shares`: shares sum to ``k``, uniform
``k / E``), and each expert's load is split by domain.

Metrics, with at least two domains among the analysed tokens (one domain leaves nothing to
compare, and the analysis is skipped): ``routing/domains`` (how many), and per layer
``routing/layer<i>/domain/top_share`` (mean over domains of the domain's largest share) beside
``.../top_share_shuffled`` (the same with domains permuted over the tokens: what routing that
ignores the domain gives).

Files, in ``domains/``: ``domains.csv`` (``layer, domain, domain_tokens, expert,
routed_tokens, domain_share, expert_share``: ``domain_share`` = routed / domain tokens,
``expert_share`` = the part of the expert's routed tokens that came from the domain) and
``layer<i>.png`` (domains × experts, ``domain_share``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from evaluation.plots import heatmap
from evaluation.routing_shares import GroupShares, top_share_metrics
from evaluation.routing_trace import RoutingTrace
from pipeline.errors import PipelineError
from pipeline.io import write_csv

DOMAIN_COLUMN = "domain"
NO_DOMAIN = "all"  # the one domain of a split whose Parquet files carry no domain column


@dataclass(frozen=True)
class TokenDomains:
    """``names``: the domains, sorted; ``of_token``: for every token of the token file, the
    index of its document's domain in ``names``."""

    names: tuple[str, ...]
    of_token: np.ndarray


def token_domains(parquet_files: Sequence[Path], tokens: np.ndarray, eot_id: int) -> TokenDomains:
    """The domain of every token of ``tokens``, the token file of the split whose documents
    ``parquet_files`` hold in order.

    The labels are the ``domain`` column of the files, documents in file order (all ``"all"``
    when the column is absent). The token file holds the same documents in the same order, each
    followed by one end-of-text token, so a token's document is the number of end-of-text tokens
    before it (an end-of-text token belongs to the document it ends).
    """
    labels: list[str] = []
    for path in parquet_files:
        if DOMAIN_COLUMN not in pq.read_schema(path).names:
            labels += [NO_DOMAIN] * pq.ParquetFile(path).metadata.num_rows
            continue
        column = pq.read_table(path, columns=[DOMAIN_COLUMN]).column(DOMAIN_COLUMN).to_pylist()
        missing = [row for row, label in enumerate(column) if not isinstance(label, str)]
        if missing:
            raise PipelineError(
                f"{path}: column {DOMAIN_COLUMN!r} has no label in row {missing[0]} "
                f"({len(missing)} rows): re-run the prepare stage"
            )
        labels += column
    ends = np.asarray(tokens) == eot_id
    if int(ends.sum()) != len(labels) or not ends[-1]:
        raise PipelineError(
            f"{', '.join(map(str, parquet_files))}: {len(labels)} documents, but their token file "
            f"holds {int(ends.sum())} end-of-text tokens (id {eot_id}) and must hold one after "
            "each document: re-run the tokenize stage after prepare (or a document contains the "
            "end-of-text text itself)"
        )
    names, label_ids = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    document_of_token = np.concatenate([[0], np.cumsum(ends[:-1])])
    return TokenDomains(tuple(names), label_ids[document_of_token])


@dataclass(frozen=True)
class DomainRouting:
    """The domains present among the analysed tokens and, per MoE layer, their shares."""

    names: tuple[str, ...]
    layers: list[GroupShares]

    @classmethod
    def from_trace(cls, trace: RoutingTrace, domains: TokenDomains) -> DomainRouting:
        present, domain_N = np.unique(domains.of_token[trace.positions_N], return_inverse=True)
        return cls(
            tuple(domains.names[i] for i in present),
            [
                GroupShares.from_trace(trace, layer, domain_N, len(present))
                for layer in range(len(trace.expert_ids))
            ],
        )

    def metrics(self) -> dict[str, float]:
        return {"routing/domains": len(self.names), **top_share_metrics(self.layers, "domain")}

    def write(self, out_dir: Path) -> list[Path]:
        write_csv(
            out_dir / "domains.csv",
            [
                "layer", "domain", "domain_tokens", "expert", "routed_tokens", "domain_share",
                "expert_share",
            ],
            self._rows(),
        )  # fmt: skip
        pngs = []
        for index, shares in enumerate(self.layers):
            pngs.append(out_dir / f"layer{index}.png")
            heatmap(
                shares.shares(),
                [f"{name} ({n})" for name, n in zip(self.names, shares.sizes_G, strict=True)],
                [str(e) for e in range(shares.counts_GE.shape[1])],
                f"Layer {index}: share of each domain's tokens routed to each expert",
                "fraction of the domain's tokens",
                pngs[-1],
            )
        return pngs

    def _rows(self):
        for index, shares in enumerate(self.layers):
            counts = shares.counts_GE
            per_expert = counts.sum(0)
            expert_share = np.divide(
                counts, per_expert, out=np.zeros(counts.shape), where=per_expert > 0
            )
            domain_share = shares.shares()
            for (d, e), routed in np.ndenumerate(counts):
                yield [
                    index, self.names[d], int(shares.sizes_G[d]), e, int(routed),
                    float(domain_share[d, e]), float(expert_share[d, e]),
                ]  # fmt: skip
