#!/bin/bash
# The data stages across a SLURM cluster: N shard jobs per stage, each step waiting for the one
# before (afterok), then `dvc commit` so that DVC records the outputs as if `dvc repro` had made
# them. Run from the repository root on a login node:
#   bash examples/data/submit.sh 8        # 8 array tasks per stage
# Outputs are byte-identical to `python -m stages.prepare && python -m stages.tokenize` on one
# machine (tests/test_stages.py checks it); a merge refuses to run while a task's completion
# marker is missing and names the tasks to re-run.
set -euo pipefail
jobs=${1:?usage: submit.sh NUMBER_OF_SHARD_JOBS}
last=$((jobs - 1))
run() { sbatch --parsable --job-name=moe-data --cpus-per-task=8 --time=04:00:00 "$@"; }
shards=$(sbatch --parsable --array=0-${last} examples/data/prepare.sbatch)
merged=$(run --dependency=afterok:${shards} --wrap "source .venv/bin/activate && python -m stages.prepare --merge")
bpe=$(run --dependency=afterok:${merged} --wrap "source .venv/bin/activate && python -m stages.tokenize --tokenizer")
encoded=$(sbatch --parsable --dependency=afterok:${bpe} --array=0-${last} examples/data/tokenize.sbatch)
done_id=$(run --dependency=afterok:${encoded} --wrap "source .venv/bin/activate && python -m stages.tokenize --merge && dvc commit -f prepare tokenize")
echo "submitted: prepare ${shards} -> ${merged}, tokenize ${bpe} -> ${encoded} -> ${done_id}"
