"""How far can a trivial rule get on the generated benchmarks? Every rule of
:mod:`evaluation.baselines` on the dev items the shipped params draw (the items the generator was
designed on: the test items are not read).

    python bench/benchmark_baselines.py                 # the shipped params.yaml
    python bench/benchmark_baselines.py --dev-items 2000

Prints, per task, chance, every rule's accuracy ± stderr, the strongest rule's margin over
chance, and the item count per difficulty tier. The unigram language model, the one baseline
that needs the training tokens, is scored by the evaluate stage (``<task>/dev/baseline/
unigram_lm`` in ``metrics/eval.json``).
"""

from __future__ import annotations

import argparse
from collections import Counter

from evaluation.baselines import chance, rule_baselines
from pipeline.config import load_params
from pipeline.data.synthetic.benchmarks import generate_benchmarks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--dev-items", type=int, help="default: prepare.synthetic.benchmark_items.dev")
    args = p.parse_args()
    params = load_params(args.params)
    n_dev = args.dev_items or params.prepare.synthetic.benchmark_items.dev
    # No training text is scanned here: contamination does not change which rules win.
    items, _ = generate_benchmarks(params.seed, {"dev": n_dev, "test": 0}, lambda texts: set())
    for task, dev in items["dev"].items():
        level = chance(dev)
        scores = sorted(rule_baselines(task, dev, None), key=lambda s: -s.accuracy)
        best = scores[0]
        print(f"{task} (seed {params.seed}, {len(dev)} dev items): chance {level:.3f}, strongest")
        print(f"  {best.name} {best.accuracy:.3f} ({best.accuracy - level:+.3f} over chance)")
        for s in scores:
            print(f"    {s.name:22s} {s.accuracy:.3f} ± {s.stderr:.3f}")
        tiers = Counter(item["tier"] for item in dev)
        print("  tiers: " + ", ".join(f"{tier} {n}" for tier, n in sorted(tiers.items())))


if __name__ == "__main__":
    main()
