"""The exact UTF-8 bytes each token id stands for, from a byte-level BPE tokenizer.

Bits per byte and the routing analysis both need to know which bytes of text a token covers.
Decoding tokens one at a time is not exact: a token holding half of a multi-byte character
decodes to U+FFFD (3 bytes). A byte-level BPE vocabulary (the tokenize stage trains one) spells
every token in GPT-2's byte-to-unicode alphabet, one character per byte, so mapping the
characters back gives each token's bytes exactly; special tokens (end-of-text) cover no text.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from tokenizers import Tokenizer

from pipeline.errors import PipelineError


class TokenizerKindError(PipelineError):
    """The tokenizer is not byte-level BPE, so token ids cannot be mapped to bytes exactly."""


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable bytes map to themselves, the other 68
    bytes to the code points 256, 257, ... in byte order (the ``ByteLevel`` pre-tokenizer's)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {chr(b): b for b in printable}
    shifted = (b for b in range(256) if b not in table.values())
    for offset, byte in enumerate(shifted):
        table[chr(256 + offset)] = byte
    return table


def token_bytes(tokenizer: Tokenizer) -> list[bytes]:
    """``result[id]`` = the bytes token ``id`` decodes to; ``b""`` for special tokens."""
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    mapping = _unicode_to_byte()
    out = [b""] * tokenizer.get_vocab_size(with_added_tokens=True)
    for text, index in tokenizer.get_vocab(with_added_tokens=True).items():
        if index in special:
            continue
        try:
            out[index] = bytes(mapping[ch] for ch in text)
        except KeyError:
            raise TokenizerKindError(
                f"token {index} ({text!r}) is not spelt in the byte-level alphabet: bits per "
                "byte and routing need a byte-level BPE tokenizer (the tokenize stage's kind)"
            ) from None
    return out


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """``(vocab,)`` int64: UTF-8 bytes per token id, 0 for special tokens."""
    return np.array([len(b) for b in token_bytes(tokenizer)], dtype=np.int64)
