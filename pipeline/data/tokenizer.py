"""Byte-level BPE: train it on the train split, save it for ``transformers``, encode splits.

Byte-level (GPT-2 style) so any Unicode text round-trips exactly and no ``<unk>`` exists.
Encoding streams Parquet record batches through ``encode_batch_fast`` (Rust threads, no offsets
computed) into a :class:`~pipeline.data.shards.ShardWriter`, so memory is bounded by one batch.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from pipeline.config import TokenizeConfig
from pipeline.data.shards import ShardHeader, ShardWriter


def iter_texts(parquet_path: Path, batch_size: int) -> Iterator[list[str]]:
    """Lists of at most ``batch_size`` texts from a split file, in file order."""
    parquet = pq.ParquetFile(parquet_path)
    for batch in parquet.iter_batches(columns=["text"], batch_size=batch_size):
        yield batch.column(0).to_pylist()


def train_tokenizer(train_parquet: Path, cfg: TokenizeConfig) -> Tokenizer:
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
    documents = pq.ParquetFile(train_parquet).metadata.num_rows
    texts = (text for batch in iter_texts(train_parquet, cfg.batch_size) for text in batch)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=documents)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, cfg: TokenizeConfig, out_dir: Path) -> None:
    """Write ``tokenizer.json`` plus the ``transformers`` files, replacing ``out_dir`` atomically."""
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
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def encode_split(
    tokenizer: Tokenizer, parquet_path: Path, bin_path: Path, cfg: TokenizeConfig
) -> tuple[ShardHeader, int]:
    """Encode one split into a token file; return its header and the UTF-8 bytes encoded."""
    eot_id = tokenizer.token_to_id(cfg.eot_token)
    documents = pq.ParquetFile(parquet_path).metadata.num_rows
    text_bytes = 0
    progress = tqdm(
        total=documents, desc=f"encode {parquet_path.stem}", unit="doc", mininterval=2, disable=None
    )
    with (
        progress,
        ShardWriter(bin_path, cfg.token_dtype, tokenizer.get_vocab_size(), eot_id) as out,
    ):
        for texts in iter_texts(parquet_path, cfg.batch_size):
            encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            out.write_documents(enc.ids for enc in encodings)
            text_bytes += sum(len(t.encode("utf-8")) for t in texts)
            progress.update(len(texts))
    return out.header(), text_bytes
