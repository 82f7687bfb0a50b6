"""The set of documents already kept, for exact de-duplication in bounded memory.

A document's fingerprint is the first 8 bytes of the SHA-256 of its cleaned text, as an
unsigned 64-bit number (the same bytes place it in a split: ``pipeline.data.corpus``). A Python
set of digests costs ~100 bytes per document; this set keeps the fingerprints in sorted numpy
runs, 8 bytes per document (4 GB for the 5·10^8 documents of a 1 TB corpus of 2 KB
documents). Two different documents share a fingerprint with probability 2^-64 per pair: over
5·10^8 documents the expected number of such pairs is n²/2^65 ≈ 0.007, and each would only
drop one document as a false duplicate.

The runs are merged like a binary counter (a run absorbs the newer one after it when it is not
longer), so there are O(log n) runs to search and each fingerprint is copied O(log n) times.
"""

from __future__ import annotations

import numpy as np

FINGERPRINT = np.dtype("<u8")


def fingerprints(digests: list[bytes]) -> np.ndarray:
    """The fingerprints of SHA-256 digests: their first 8 bytes, big-endian."""
    return np.frombuffer(b"".join(d[:8] for d in digests), dtype=">u8").astype(FINGERPRINT)


class FingerprintSet:
    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    @property
    def nbytes(self) -> int:
        return sum(run.nbytes for run in self._runs)

    def contains(self, query: np.ndarray) -> np.ndarray:
        """A boolean mask: which of ``query`` are in the set."""
        found = np.zeros(len(query), dtype=bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, query), len(run) - 1)
            found |= run[at] == query
        return found

    def add(self, new: np.ndarray) -> None:
        """Add fingerprints that are not in the set yet (callers filter with :meth:`contains`)."""
        if len(new) == 0:
            return
        self._runs.append(np.sort(new.astype(FINGERPRINT)))
        while len(self._runs) > 1 and len(self._runs[-2]) <= len(self._runs[-1]):
            last = self._runs.pop()
            self._runs[-1] = np.sort(np.concatenate([self._runs[-1], last]))

    def first_new(self, query: np.ndarray) -> np.ndarray:
        """A mask of the entries of ``query`` to keep: not in the set and not equal to an
        earlier entry of ``query``; adds them to the set."""
        _, first = np.unique(query, return_index=True)
        keep = np.zeros(len(query), dtype=bool)
        keep[first] = True
        keep &= ~self.contains(query)
        self.add(query[keep])
        return keep
