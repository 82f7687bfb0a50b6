"""Token splits on disk: numbered shards of raw tokens and one manifest per split.

``data/tokens/<split>/`` holds ``<split>-00000.bin``, ``<split>-00001.bin``, ... (raw
little-endian ``uint16``/``uint32``, one per prepared Parquet shard, in the same order) and
``manifest.json``::

    {"format": "moe-pipeline-token-split/1", "split": "test", "dtype": "uint16",
     "vocab_size": 4096, "eot_id": 0, "tokenizer_sha256": "...",
     "num_tokens": 123456, "num_documents": 600,
     "shards": [{"file": "test-00000.bin", "num_tokens": 123456, "num_documents": 600,
                 "text_bytes": 160000, "sha256": "...", "source_sha256": "...",
                 "domains": [["sotu", 550], ["moby-dick", 50]]}]}

The split is the concatenation of its shards, a nanoGPT-style token stream: every document is
followed by one end-of-text token (``eot_id``), documents in prepare's order. ``domains`` is
run-length: ``[["sotu", 550], ["moby-dick", 50]]`` says documents 0-549 of the shard are
``sotu`` and 550-599 ``moby-dick``; document ``d`` of the split is the one after the ``d``-th
end-of-text token. :meth:`SplitManifest.document_domains` expands the runs over the whole split.

The manifest is the split's index and its integrity record: :func:`open_split` refuses a
missing shard, a shard whose size or SHA-256 differs from it, shards of different tokenizers,
and the single-file layout of earlier versions (``data/tokens/<split>.bin``), and gives the
split as one read-only :class:`TokenStream` over memory-mapped shards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.manifests import MANIFEST, load_manifest
from pipeline.errors import PipelineError
from pipeline.io import atomic_path, sha256_file, write_json

FORMAT = "moe-pipeline-token-split/1"
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class ShardError(PipelineError, ValueError):
    """A token split is missing, truncated, altered or inconsistent with its manifest."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


@dataclass(frozen=True)
class TokenShard:
    """One shard as the manifest records it."""

    file: str
    num_tokens: int
    num_documents: int
    text_bytes: int  # UTF-8 bytes of the documents it encodes
    sha256: str
    source_sha256: str  # of the Parquet shard it encodes
    domains: tuple[tuple[str, int], ...]  # runs of (domain, documents)

    def to_json(self) -> dict:
        return {**self.__dict__, "domains": [list(run) for run in self.domains]}

    @classmethod
    def from_json(cls, raw: dict) -> TokenShard:
        return cls(**{**raw, "domains": tuple((d, n) for d, n in raw["domains"])})


@dataclass(frozen=True)
class SplitManifest:
    """What ``manifest.json`` says about a split (no shard is opened to know it)."""

    directory: Path
    split: str
    dtype: str
    vocab_size: int
    eot_id: int
    tokenizer_sha256: str
    shards: tuple[TokenShard, ...]
    sha256: str  # of manifest.json: names every shard's digest, so it identifies the split

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.shards)

    @property
    def num_documents(self) -> int:
        return sum(s.num_documents for s in self.shards)

    def domain_runs(self) -> list[tuple[str, int]]:
        """``(domain, documents)`` runs over the whole split, adjacent equal runs merged."""
        runs: list[tuple[str, int]] = []
        for shard in self.shards:
            for domain, count in shard.domains:
                if runs and runs[-1][0] == domain:
                    runs[-1] = (domain, runs[-1][1] + count)
                else:
                    runs.append((domain, count))
        return runs

    def document_domains(self) -> list[str]:
        """The domain of each document of the split: item ``d`` is the domain of the document
        that follows the ``d``-th end-of-text token of :attr:`TokenSplit.tokens`."""
        return [domain for domain, count in self.domain_runs() for _ in range(count)]

    def check_same_tokenizer(self, other: SplitManifest) -> None:
        """Splits encoded by different tokenizers would train or score on meaningless ids."""
        mine = (self.tokenizer_sha256, self.vocab_size, self.eot_id, self.dtype)
        theirs = (other.tokenizer_sha256, other.vocab_size, other.eot_id, other.dtype)
        if mine != theirs:
            raise ShardError(
                f"{other.directory} (tokenizer {other.tokenizer_sha256[:12]}, vocab "
                f"{other.vocab_size}, eot {other.eot_id}, {other.dtype}) was not encoded with the "
                f"tokenizer of {self.directory} (tokenizer {self.tokenizer_sha256[:12]}, vocab "
                f"{self.vocab_size}, eot {self.eot_id}, {self.dtype}); re-run the tokenize stage"
            )


class TokenStream:
    """The tokens of a split's shards as one read-only 1-D sequence, without copying them.

    ``len(stream)``, ``stream[i]``, ``stream[a:b]`` (an ``np.ndarray``: a memory-map view when
    the slice lies in one shard, a copy when it crosses shards) and ``stream[positions]`` (an
    integer array: a gather); ``np.asarray(stream)`` copies the whole split into memory.
    """

    def __init__(self, arrays: Sequence[np.ndarray]):
        self._arrays = list(arrays)
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])
        self.dtype = self._arrays[0].dtype

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def shard_arrays(self) -> list[np.ndarray]:
        """The memory-mapped shards, in order (for whole-split passes, shard by shard)."""
        return list(self._arrays)

    def __getitem__(self, key):
        """A slice (step 1), one position, or an integer array of positions (a gather, in the
        array's shape), as ``np.ndarray`` indexing gives them."""
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("a TokenStream slice takes no step")
            return self._range(start, max(start, stop))
        positions = np.asarray(key)
        if positions.dtype.kind not in "iu":
            raise IndexError(f"token positions must be integers, got {positions.dtype}")
        positions = np.where(positions < 0, positions + len(self), positions)
        if positions.size and not (positions.min() >= 0 and positions.max() < len(self)):
            raise IndexError(f"token position outside the split's {len(self)} tokens")
        shards = np.searchsorted(self._starts, positions, side="right") - 1
        if positions.ndim == 0:
            return self._arrays[int(shards)][int(positions - self._starts[shards])]
        out = np.empty(positions.shape, dtype=self.dtype)
        for shard in np.unique(shards):
            where = shards == shard
            out[where] = self._arrays[shard][positions[where] - self._starts[shard]]
        return out

    def _range(self, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        pieces = []
        shard = first
        while start < stop:
            offset = start - self._starts[shard]
            take = min(stop - start, len(self._arrays[shard]) - offset)
            pieces.append(self._arrays[shard][offset : offset + take])
            start += take
            shard += 1
        if not pieces:
            return np.zeros(0, dtype=self.dtype)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._range(0, len(self))
        return out if dtype is None else out.astype(dtype)


@dataclass(frozen=True)
class TokenSplit(SplitManifest):
    """An opened split: the manifest's facts plus the tokens."""

    tokens: TokenStream = field(default=None, repr=False)


def read_manifest(directory: Path) -> SplitManifest:
    """A split's manifest; refuses the single-file layout of earlier versions by name."""
    path = directory / MANIFEST
    raw = load_manifest(directory, FORMAT, ".bin", "tokenize", ShardError)
    try:
        shards = tuple(TokenShard.from_json(s) for s in raw["shards"])
        manifest = SplitManifest(
            directory,
            raw["split"],
            raw["dtype"],
            raw["vocab_size"],
            raw["eot_id"],
            raw["tokenizer_sha256"],
            shards,
            sha256_file(path),
        )
    except (KeyError, TypeError) as exc:
        raise ShardError(
            f"{path}: not a valid manifest ({exc!r}); re-run the tokenize stage"
        ) from None
    if manifest.dtype not in DTYPES:
        raise ShardError(f"{path}: dtype {manifest.dtype!r}, expected one of {sorted(DTYPES)}")
    return manifest


def open_split(directory: Path, verify: bool = True) -> TokenSplit:
    """The split in ``directory``, every shard checked against the manifest: its size always,
    its SHA-256 too unless ``verify`` is false (hashed in parallel threads)."""
    manifest = read_manifest(directory)
    if manifest.num_tokens == 0:
        raise ShardError(f"{directory / MANIFEST}: the split holds no tokens (empty split)")
    dtype = DTYPES[manifest.dtype]
    for shard in manifest.shards:
        _check_size(directory / shard.file, shard.num_tokens * dtype.itemsize)
    if verify:
        with ThreadPoolExecutor() as pool:  # hashlib releases the GIL: shards hash in parallel
            digests = pool.map(sha256_file, [directory / s.file for s in manifest.shards])
            for shard, digest in zip(manifest.shards, digests, strict=True):
                if digest != shard.sha256:
                    raise ShardError(
                        f"{directory / shard.file}: SHA-256 differs from the one in "
                        f"{directory / MANIFEST} (altered, or a shard of another run); re-run "
                        "the tokenize stage"
                    )
    arrays = [
        np.memmap(directory / s.file, dtype=dtype, mode="r")
        for s in manifest.shards
        if s.num_tokens
    ]
    return TokenSplit(**manifest.__dict__, tokens=TokenStream(arrays))


def _check_size(path: Path, expected: int) -> None:
    if not path.is_file():
        raise ShardError(
            f"{path}: listed in {path.parent / MANIFEST} but missing (deleted?); re-run the "
            "tokenize stage"
        )
    actual = path.stat().st_size
    if actual != expected:
        raise ShardError(
            f"{path}: {actual} bytes, the manifest says {expected} (truncated or overwritten); "
            "re-run the tokenize stage"
        )


def write_manifest(directory: Path, template: SplitManifest) -> SplitManifest:
    """Write ``manifest.json`` for ``template``'s shards (already in ``directory``)."""
    content = {
        "format": FORMAT,
        "split": template.split,
        "dtype": template.dtype,
        "vocab_size": template.vocab_size,
        "eot_id": template.eot_id,
        "tokenizer_sha256": template.tokenizer_sha256,
        "num_tokens": template.num_tokens,
        "num_documents": template.num_documents,
        "shards": [s.to_json() for s in template.shards],
    }
    write_json(directory / MANIFEST, content)
    return read_manifest(directory)


class ShardWriter:
    """Streams documents' tokens into one ``.bin`` shard while hashing them and counting the
    documents of each domain; the file appears only when the block succeeds.
    """

    def __init__(self, bin_path: Path | str, dtype: str, vocab_size: int, eot_id: int):
        if dtype not in DTYPES:
            raise ValueError(f"token dtype {dtype!r}: expected one of {sorted(DTYPES)}")
        limit = np.iinfo(DTYPES[dtype]).max + 1
        if vocab_size > limit:
            raise ValueError(f"vocab_size {vocab_size} does not fit in {dtype} (max {limit})")
        self.bin_path = Path(bin_path)
        self.dtype = DTYPES[dtype]
        self.eot_id = eot_id
        self.num_tokens = 0
        self.num_documents = 0
        self.text_bytes = 0
        self.domains: list[tuple[str, int]] = []
        self._digest = hashlib.sha256()

    def __enter__(self) -> ShardWriter:
        self._atomic = atomic_path(self.bin_path)
        self._handle = open(self._atomic.__enter__(), "wb")  # noqa: SIM115 - closed in __exit__
        return self

    def write_documents(
        self,
        token_lists: Sequence[Sequence[int]],
        domains: Sequence[str] | None = None,
        text_bytes: int = 0,
    ) -> None:
        """Append documents, each followed by the end-of-text token (``text_bytes``: the UTF-8
        size of their text, for the manifest)."""
        flat: list[int] = []  # one list, converted once: faster than an array per document
        for ids in token_lists:
            flat.extend(ids)
            flat.append(self.eot_id)
        data = np.asarray(flat, dtype=self.dtype).tobytes()
        self._handle.write(data)
        self._digest.update(data)
        self.num_tokens += len(flat)
        self.num_documents += len(token_lists)
        self.text_bytes += text_bytes
        for domain in domains if domains is not None else [""] * len(token_lists):
            if self.domains and self.domains[-1][0] == domain:
                self.domains[-1] = (domain, self.domains[-1][1] + 1)
            else:
                self.domains.append((domain, 1))

    def __exit__(self, exc_type, exc, tb) -> None:
        self._handle.close()
        self._atomic.__exit__(exc_type, exc, tb)

    def shard(self, source_sha256: str = "") -> TokenShard:
        return TokenShard(
            self.bin_path.name,
            self.num_tokens,
            self.num_documents,
            self.text_bytes,
            self._digest.hexdigest(),
            source_sha256,
            tuple(self.domains),
        )


def write_split(
    directory: Path,
    split: str,
    shards: Iterable[Iterable[Sequence[int]]],
    *,
    dtype: str,
    vocab_size: int,
    eot_id: int,
    tokenizer_sha256: str = "",
) -> SplitManifest:
    """A whole split from token lists, shard by shard (tests and tools; the tokenize stage
    writes shards in parallel and the manifest last)."""
    written = []
    for index, documents in enumerate(shards):
        with ShardWriter(directory / shard_name(split, index), dtype, vocab_size, eot_id) as out:
            out.write_documents(list(documents))
        written.append(out.shard())
    template = SplitManifest(
        directory, split, dtype, vocab_size, eot_id, tokenizer_sha256, tuple(written), ""
    )
    return write_manifest(directory, template)


def token_counts(split: TokenSplit) -> np.ndarray:
    """How often each token id occurs in the split (``vocab_size`` int64 counts), shard by
    shard so the split is never in memory at once."""
    counts = np.zeros(split.vocab_size, dtype=np.int64)
    for array in split.tokens.shard_arrays:
        shard_counts = np.bincount(array, minlength=split.vocab_size)
        if len(shard_counts) > split.vocab_size:
            raise ShardError(
                f"{split.directory}: token id {len(shard_counts) - 1} outside the vocabulary of "
                f"{split.vocab_size}; re-run the tokenize stage"
            )
        counts += shard_counts
    return counts


def unigram_entropy(split: TokenSplit) -> float:
    """Entropy in nats per token of the split's unigram distribution: the loss of the best
    model that ignores context, the bar a language model's loss has to clear to have learned any."""
    counts = token_counts(split)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
