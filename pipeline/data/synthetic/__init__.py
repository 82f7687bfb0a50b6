"""Seeded synthetic corpus: short English stories from a probabilistic grammar, plus benchmarks.

Why a grammar instead of downloaded text: the pipeline must run end to end offline, produce the
same bytes for the same seed everywhere, and come with benchmark items whose answers are known
exactly. The stories therefore carry the phenomena the benchmarks probe:

* subject-verb agreement, also across a prepositional phrase or a relative clause whose noun
  has the other number (*The keys under the bench are rusty.*);
* entity tracking: objects change hands between named characters (*Mia gave the ball to Tom.*);
* counting with correct arithmetic (*Tom had 3 red boxes. He gave one to Ana. Now he has 2 red
  boxes.*).

Determinism: every choice comes from a ``random.Random`` instance seeded with an int; no global
RNG, no ``hash()`` of strings, no iteration over sets. The corpus stream uses ``Random(seed)``
and each benchmark item set its own string-seeded stream
(:func:`~pipeline.data.synthetic.benchmarks.benchmark_rng`), so none share draws. On top of
that, agreement items use (head noun, predicate) pairs that the corpus never uses
(:func:`~pipeline.data.synthetic.grammar.held_out`), so an agreement item cannot be memorised verbatim from the training data.

Public API (the prepare stage calls it): :func:`labelled_documents` (texts with their kind, story,
tracking or counting: the corpus's domains), :func:`write_benchmark_sets`, :func:`word_categories` (with :data:`WORD_PATTERN`, written to a data file for the evaluation).
:func:`generate_story` exposes one story with its bookkeeping for tests.

Modules: ``lexicon`` (hand-curated words and morphology), ``pools`` (word pools by kind),
``grammar`` (characters, the story being written, sentence helpers), ``agreement`` (minimal
pairs), ``templates`` (story templates), ``stories`` (stories and the corpus stream),
``episodes`` (tracking and counting episodes), ``benchmarks`` (held-out items), ``categories``
(word categories for the routing analysis).
"""

from pipeline.data.synthetic.agreement import AGREEMENT_PHENOMENA, agreement_pair
from pipeline.data.synthetic.benchmarks import (
    TASKS,
    generate_benchmarks,
    write_benchmark_sets,
)
from pipeline.data.synthetic.categories import WORD_PATTERN, word_categories
from pipeline.data.synthetic.episodes import COUNTING_EPISODES
from pipeline.data.synthetic.grammar import CAST_POOL
from pipeline.data.synthetic.stories import (
    DOCUMENT_KINDS,
    generate_documents,
    generate_story,
    labelled_documents,
)

__all__ = [
    "AGREEMENT_PHENOMENA",
    "CAST_POOL",
    "TASKS",
    "COUNTING_EPISODES",
    "WORD_PATTERN",
    "agreement_pair",
    "generate_benchmarks",
    "DOCUMENT_KINDS",
    "generate_documents",
    "labelled_documents",
    "generate_story",
    "word_categories",
    "write_benchmark_sets",
]
