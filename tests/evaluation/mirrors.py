"""Small local dataset mirrors in the Hugging Face Hub's layout, with the real schemas of the
datasets four standard lm-eval tasks read and text of our own: ``<root>/<hub id>/README.md``
(``configs:`` front matter) and ``<hub id>/<config>/<split>-00000-of-00001.parquet``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ARC = "allenai/ai2_arc"
LAMBADA = "EleutherAI/lambada_openai"
BLIMP = "nyu-mll/blimp"
WIKITEXT = "EleutherAI/wikitext_document_level"
BLIMP_SUBSET = "anaphor_number_agreement"
STANDARD_TASKS = ("arc_easy", "lambada_openai", f"blimp_{BLIMP_SUBSET}", "wikitext")

ARC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("choices", pa.struct([("text", pa.list_(pa.string())), ("label", pa.list_(pa.string()))])),
        ("answerKey", pa.string()),
    ]
)
BLIMP_SCHEMA = pa.schema(
    [
        ("sentence_good", pa.string()),
        ("sentence_bad", pa.string()),
        ("field", pa.string()),
        ("linguistics_term", pa.string()),
        ("UID", pa.string()),
        ("simple_LM_method", pa.bool_()),
        ("one_prefix_method", pa.bool_()),
        ("two_prefix_method", pa.bool_()),
        ("lexically_identical", pa.bool_()),
        ("pair_id", pa.int32()),
    ]
)

ARC_QUESTIONS = [
    ("What did Tom find in the garden?", ["a red ball", "a blue car", "the moon", "a song"], 0),
    ("Where does the fox sleep?", ["in the sky", "in a den", "on a cloud", "in a cup"], 1),
    ("How many legs does a cat have?", ["two", "six", "four", "ten"], 2),
    ("What does a bird use to fly?", ["its tail only", "a rope", "a wheel", "its wings"], 3),
    ("Who keeps the sheep on the hill?", ["the shepherd", "the baker", "the queen", "a fish"], 0),
    ("What falls from clouds?", ["bread", "rain", "stones", "shoes"], 1),
]
LAMBADA_TEXTS = [
    "Lily picked up the ball and gave it to her brother Sam",
    "the old dog slept by the warm fire all night long",
    "Tom had three red apples and he ate one of the apples",
    "the children ran to the park to play with the kite",
    "after the rain the garden was green and the flowers were bright",
]
BLIMP_PAIRS = [
    ("The boys saw themselves in the mirror.", "The boys saw himself in the mirror."),
    ("Mia hid herself behind the door.", "Mia hid themselves behind the door."),
    ("The cats cleaned themselves.", "The cats cleaned itself."),
    ("Tom hurt himself on the hill.", "Tom hurt themselves on the hill."),
]
# Plain prose: no wikitext markup, so the task's detokenizer leaves every page as it is.
WIKITEXT_PAGES = [
    "The river runs past the old mill and into the valley. In spring the water is high and "
    "cold, and the children watch the boats go by from the bridge near the school.",
    "The fox lives at the edge of the wood. At night it walks to the farm to look for food, "
    "and in the morning it sleeps in its den under the roots of a tall oak tree.",
]


def _write(root: Path, hub_id: str, splits: dict[str, dict[str, pa.Table]]) -> None:
    """``splits``: config -> split -> table; writes the files and the README's configs."""
    readme = ["---", "configs:"]
    for config, tables in splits.items():
        readme += [f"- config_name: {config}", "  data_files:"]
        for split, table in tables.items():
            path = root / hub_id / config / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            readme += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    readme += [
        "---",
        f"Local mirror of {hub_id} for tests: the schema is the Hub's, the text ours.",
    ]
    (root / hub_id / "README.md").write_text("\n".join(readme) + "\n", encoding="utf-8")


def arc_table(split: str) -> pa.Table:
    rows = [
        {
            "id": f"{split}-{i}",
            "question": question,
            "choices": {"text": choices, "label": list("ABCD") if i % 2 else list("1234")},
            "answerKey": (list("ABCD") if i % 2 else list("1234"))[answer],
        }
        for i, (question, choices, answer) in enumerate(ARC_QUESTIONS)
    ]
    return pa.Table.from_pylist(rows, schema=ARC_SCHEMA)


def blimp_table() -> pa.Table:
    rows = [
        {
            "sentence_good": good,
            "sentence_bad": bad,
            "field": "morphology",
            "linguistics_term": "anaphor_agreement",
            "UID": BLIMP_SUBSET,
            "simple_LM_method": True,
            "one_prefix_method": True,
            "two_prefix_method": False,
            "lexically_identical": False,
            "pair_id": i,
        }
        for i, (good, bad) in enumerate(BLIMP_PAIRS)
    ]
    return pa.Table.from_pylist(rows, schema=BLIMP_SCHEMA)


def build_mirror(root: Path) -> Path:
    """The four datasets under ``root``, with every split the tasks' YAMLs name."""
    _write(root, ARC, {"ARC-Easy": {s: arc_table(s) for s in ("train", "validation", "test")}})
    _write(root, LAMBADA, {"default": {"test": pa.table({"text": LAMBADA_TEXTS})}})
    _write(root, BLIMP, {BLIMP_SUBSET: {"train": blimp_table()}})
    pages = pa.table({"page": WIKITEXT_PAGES})
    _write(
        root, WIKITEXT, {"wikitext-2-raw-v1": {s: pages for s in ("train", "validation", "test")}}
    )
    return root
