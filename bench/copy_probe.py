"""Has the trained model learned to copy names from its context (an induction circuit)?

    python bench/copy_probe.py              # in a workspace after `dvc repro train`
    python bench/copy_probe.py --limit 300

Entity tracking and counting both need the model to bring a name or a number seen earlier back
into its prediction. Before that copying circuit forms (a sudden extra fall of the validation
loss, the "induction bump" of Olsson et al., 2022, https://arxiv.org/abs/2209.11895), those
benchmarks sit at chance whatever else the model knows. This probe shows which side of the
bump a model is on: on the entity_cloze ``dev`` items of ``data/benchmarks`` (dev: a probe
used to choose runs must not look at the reported items), at the position where a name must
follow (``... Now the kite is with``), it measures how much of the probability given to
character names goes to the names of the story's own cast. A model that cannot copy spreads
that mass over all the names it knows (a cast of three holds ~6 % of the 49); one that can puts
most of it on the cast.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from tokenizers import Tokenizer

from pipeline.config import load_params
from pipeline.data import synthetic as syn
from pipeline.data.benchmark_sets import read_items
from pipeline.model_io import load_model
from pipeline.paths import ModelFiles, Paths


def parse_args() -> argparse.Namespace:
    paths = Paths()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", type=Path, default=paths.models_dir)
    p.add_argument("--tokenizer", type=Path, default=paths.tokenizer_file)
    p.add_argument("--items", type=Path, default=paths.benchmark("entity_cloze", "dev"))
    p.add_argument("--limit", type=int, default=150, help="items to probe")
    p.add_argument("--params", default="params.yaml", help="for tokenize.eot_token")
    return p.parse_args()


def name_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Cast names that are one token after a space (as they are when they follow a word)."""
    ids = {}
    for name, _ in syn.CAST_POOL:
        encoded = tokenizer.encode(" " + name).ids
        if len(encoded) == 1:
            ids[name] = encoded[0]
    return ids


@torch.no_grad()
def main() -> None:
    args = parse_args()
    model = load_model(ModelFiles.in_dir(args.models))
    tokenizer = Tokenizer.from_file(str(args.tokenizer))
    eot = tokenizer.token_to_id(load_params(args.params).tokenize.eot_token)
    names = name_token_ids(tokenizer)
    all_names = torch.tensor(sorted(names.values()))
    cast_share, uniform, top_is_cast = [], [], []
    for item in read_items(args.items)[: args.limit]:
        cast = [names[c] for c in item["choices"] if c in names]
        if len(cast) != len(item["choices"]):
            continue  # a multi-token name: the probe looks at one position only
        ids = [eot, *tokenizer.encode(f"{item['context']} {item['question']}").ids]
        probs = model(torch.tensor([ids])).logits[0, -1].softmax(-1)
        cast_share.append((probs[torch.tensor(cast)].sum() / probs[all_names].sum()).item())
        uniform.append(len(cast) / len(names))
        top_is_cast.append(int(probs.argmax()) in cast)
    n = len(cast_share)
    print("| items | one-token names | cast share of name mass (if uniform) | top token in cast |")
    print("|-------|-----------------|--------------------------------------|-------------------|")
    print(
        f"| {n} | {len(names)} | {statistics.fmean(cast_share):.3f} "
        f"({statistics.fmean(uniform):.3f}) | {sum(top_is_cast) / n:.3f} |"
    )


if __name__ == "__main__":
    main()
