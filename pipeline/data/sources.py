"""Where raw documents come from: the synthetic grammar, a Hugging Face dataset, or local files.

A source is cut into :class:`SourceUnit` s, the tasks of the prepare stage: each is read start to
end by one process, lazily, so memory stays bounded whatever the corpus size, and the units in
order give the source's documents in order (:func:`iter_documents`). :func:`plan_units` cuts:

* ``files``: the sorted files, grouped in order into units of about ``prepare.shard_mb`` MB; a
  ``.jsonl`` file bigger than that is cut into equal line-aligned byte ranges of at most
  ``shard_mb`` MB, a unit each, so that one large file is read by every worker (a bigger
  ``.txt`` or ``.parquet`` file is a unit of its own);
* ``hf`` with ``streaming: true`` and no ``max_documents``: one unit per data file of the dataset
  (``IterableDataset.shard``); otherwise one unit (``max_documents`` counts rows in order);
* ``synthetic``: one unit (the generator is one seeded stream).

Every document carries a domain label: ``prepare.files.domain`` (:mod:`pipeline.data.files`),
``prepare.hf.domain_field`` (else the dataset's name), or the synthetic document's kind
(``story``, ``tracking``, ``counting``).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import HFSource, PrepareConfig, SyntheticSource
from pipeline.data.documents import DataError, Document
from pipeline.data.files import label_of, list_files, read_file, text_of

__all__ = ["DataError", "Document", "SourceUnit", "iter_documents", "iter_unit", "plan_units"]


@dataclass(frozen=True)
class SourceUnit:
    """One task of the prepare stage. ``key`` says what it reads (JSON), so that a shard job's
    completion marker can be matched with the current plan."""

    index: int
    key: dict[str, Any]


def plan_units(cfg: PrepareConfig, seed: int) -> list[SourceUnit]:
    if cfg.source == "synthetic":
        keys = [{"synthetic": cfg.synthetic.model_dump(mode="json"), "seed": seed}]
    elif cfg.source == "hf":
        keys = [{"hf": cfg.hf.model_dump(mode="json"), "shard": s} for s in _hf_shards(cfg.hf)]
    else:
        keys = _file_units(cfg)
    return [SourceUnit(index, key) for index, key in enumerate(keys)]


def iter_unit(cfg: PrepareConfig, seed: int, unit: SourceUnit) -> Iterator[Document]:
    """The documents of one unit, in order."""
    if cfg.source == "synthetic":
        return _synthetic(cfg.synthetic, seed)
    if cfg.source == "hf":
        return _huggingface(cfg.hf, unit.key["shard"])
    max_bytes = int(cfg.max_document_mb * 1e6)
    span = unit.key.get("bytes")  # a range of a cut .jsonl file
    return itertools.chain.from_iterable(
        read_file(cfg.files, path, max_bytes, tuple(span) if span else None)
        for path, _, _ in unit.key["files"]
    )


def iter_documents(cfg: PrepareConfig, seed: int) -> Iterator[Document]:
    """Every document of the configured source, in a deterministic order."""
    for unit in plan_units(cfg, seed):
        yield from iter_unit(cfg, seed, unit)


def _file_units(cfg: PrepareConfig) -> list[dict[str, list]]:
    """Consecutive files, grouped until a group holds ``shard_mb`` MB, each group a unit
    ``{"files": [file keys]}``; a ``.jsonl`` file over ``shard_mb`` MB is cut into equal byte
    ranges, a unit ``{"files": [its key], "bytes": [start, end]}`` each. The cut depends on the
    file's size alone, never on the number of workers, so the outputs do not either."""
    units: list[dict[str, list]] = []
    size = target = cfg.shard_mb * 1e6
    for file in list_files(cfg.files):
        if file.path.endswith(".jsonl") and file.size > target:
            pieces = math.ceil(file.size / target)
            bounds = [file.size * i // pieces for i in range(pieces + 1)]
            units += [
                {"files": [file.key()], "bytes": [a, b]} for a, b in itertools.pairwise(bounds)
            ]
            size = target  # the next file starts a unit of its own
            continue
        if size >= target:
            units.append({"files": []})
            size = 0
        units[-1]["files"].append(file.key())
        size += file.size
    return units


def _synthetic(cfg: SyntheticSource, seed: int) -> Iterator[Document]:
    from pipeline.data.synthetic import labelled_documents

    documents = labelled_documents(seed, cfg.size_mb, cfg.episode_share)
    for index, (kind, text) in enumerate(documents):
        yield Document(text, f"synthetic:{index}", kind)


# --------------------------------------------------------------------------- Hugging Face
def _hf_shards(cfg: HFSource) -> list[list[int] | None]:
    """``[index, count]`` of each data file to read as a unit, or ``[None]`` for one unit."""
    if not cfg.streaming or cfg.max_documents is not None:
        return [None]
    count = _load_hf(cfg).num_shards
    return [[index, count] for index in range(count)] if count > 1 else [None]


def _huggingface(cfg: HFSource, shard: list[int] | None) -> Iterator[Document]:
    dataset = _load_hf(cfg)
    columns = dataset.column_names or []
    for field, key in ((cfg.text_field, "text_field"), (cfg.domain_field, "domain_field")):
        if field is not None and columns and field not in columns:
            raise DataError(
                f"dataset {cfg.name!r}: no {key.split('_')[0]} field {field!r} "
                f"(prepare.hf.{key}); its columns are {columns}"
            )
    where = f"hf:{cfg.name}"
    if shard is not None:
        dataset = dataset.shard(num_shards=shard[1], index=shard[0], contiguous=True)
        where += f":shard {shard[0]}"
    default_domain = Path(cfg.name).name or cfg.name
    rows = itertools.islice(dataset, cfg.max_documents)  # a stream stops reading here
    for index, row in enumerate(rows):
        at = f"{where}[{index}]"
        text = text_of(row, cfg.text_field, at, "prepare.hf.text_field")
        domain = default_domain
        if cfg.domain_field is not None:
            domain = label_of(row, cfg.domain_field, at, "prepare.hf.domain_field")
        yield Document(text, at, domain)


def _load_hf(cfg: HFSource):
    import datasets

    try:
        return datasets.load_dataset(cfg.name, cfg.config, split=cfg.split, streaming=cfg.streaming)
    except Exception as exc:  # the hub raises many types; all mean "could not get it"
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        hint = (
            "this machine is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set) and the dataset is "
            "not cached"
            if offline
            else "the hub may be unreachable"
        )
        raise DataError(
            f"could not load Hugging Face dataset {cfg.name!r} (config {cfg.config!r}, split "
            f"{cfg.split!r}): {type(exc).__name__}: {exc}\n  {hint}. To use local files instead, "
            "set prepare.source: files and prepare.files.glob: 'path/*.parquet' (or .jsonl/.txt), "
            "or point prepare.hf.name at a local directory in the hub's layout."
        ) from exc
