"""Byte-level BPE: train it on the train split, save it for ``transformers``, encode shards.

Byte-level (GPT-2 style) so any Unicode text round-trips exactly and no ``<unk>`` exists.
Encoding streams a Parquet shard's record batches through ``encode_batch_fast`` (Rust threads,
no offsets computed) into a :class:`~pipeline.data.shards.ShardWriter`, so memory is bounded by
one batch. The saved directory records its files' digests (:mod:`pipeline.data.digests`),
which every stage that reads the tokenizer checks.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pyarrow.compute as pc
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from pipeline.config import TokenizeConfig
from pipeline.data.digests import record_digests
from pipeline.data.prepared import DocumentShard, PreparedSplit, iter_batches, iter_texts
from pipeline.data.shards import (
    ShardWriter,
    SplitManifest,
    TokenShard,
    shard_name,
    write_manifest,
)


def training_texts(split: PreparedSplit, cfg: TokenizeConfig) -> Iterator[str]:
    """The train split's texts in order, up to ``tokenize.train_max_mb`` MB of them."""
    budget = float("inf") if cfg.train_max_mb is None else cfg.train_max_mb * 1e6
    for batch in iter_texts(split, cfg.batch_size):
        for text in batch:
            if budget <= 0:
                return
            budget -= len(text.encode("utf-8"))
            yield text


def train_tokenizer(
    texts: Iterable[str], cfg: TokenizeConfig, length: int | None = None
) -> Tokenizer:
    """BPE trained on ``texts`` (the stage passes :func:`training_texts`; ``length``, their
    number if known, only feeds the progress bar)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(cfg.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tokenizer.train_from_iterator(texts, trainer, length=length)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, cfg: TokenizeConfig, out_dir: Path) -> None:
    """Write ``tokenizer.json``, the ``transformers`` files and their digests, replacing
    ``out_dir`` atomically."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=cfg.eot_token,
        bos_token=cfg.eot_token,
        unk_token=None,
        pad_token=cfg.eot_token,
        additional_special_tokens=[t for t in cfg.special_tokens if t != cfg.eot_token] or None,
        clean_up_tokenization_spaces=False,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        fast.save_pretrained(tmp)
        record_digests(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; an output directory is an ordinary one
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def encode_shard(
    tokenizer: Tokenizer, source: DocumentShard, bin_path: Path, cfg: TokenizeConfig
) -> TokenShard:
    """Encode one Parquet shard (checked against its digest first) into one token shard."""
    eot_id = tokenizer.token_to_id(cfg.eot_token)
    progress = tqdm(
        total=source.documents,
        desc=f"encode {source.path.name}",
        unit="doc",
        mininterval=2,
        disable=None,
    )
    with (
        progress,
        ShardWriter(bin_path, cfg.token_dtype, tokenizer.get_vocab_size(), eot_id) as out,
    ):
        for batch in iter_batches([source], cfg.batch_size, ("text", "domain")):
            texts = batch.column(0).to_pylist()
            encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            text_bytes = pc.sum(pc.binary_length(batch.column(0))).as_py() or 0
            out.write_documents(
                [enc.ids for enc in encodings], batch.column(1).to_pylist(), text_bytes
            )
            progress.update(len(texts))
    return out.shard(source.sha256)


def split_manifest(
    directory: Path,
    split: str,
    shards: Sequence[TokenShard],
    tokenizer: Tokenizer,
    cfg: TokenizeConfig,
    tokenizer_sha256: str,
) -> SplitManifest:
    """The manifest of ``shards`` (encoded by ``tokenizer``), to write into ``directory``."""
    return SplitManifest(
        directory,
        split,
        cfg.token_dtype,
        tokenizer.get_vocab_size(),
        tokenizer.token_to_id(cfg.eot_token),
        tokenizer_sha256,
        tuple(shards),
        "",
    )


def encode_split(
    tokenizer: Tokenizer,
    prepared: PreparedSplit,
    directory: Path,
    cfg: TokenizeConfig,
    tokenizer_sha256: str = "",
) -> SplitManifest:
    """Every shard of a prepared split, one after the other in this process, then the manifest
    (tests and tools; the stage encodes shards in parallel tasks and merges them)."""
    shards = [
        encode_shard(tokenizer, source, directory / shard_name(prepared.split, index), cfg)
        for index, source in enumerate(prepared.shards)
    ]
    template = split_manifest(directory, prepared.split, shards, tokenizer, cfg, tokenizer_sha256)
    return write_manifest(directory, template)
