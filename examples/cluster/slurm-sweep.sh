#!/bin/bash
# One shard of the grid per array task. Submit with submit-slurm.sh (it queues the merge
# after every shard has succeeded), or alone: sbatch slurm-sweep.sh
#SBATCH --job-name=squeeze-sweep
#SBATCH --array=0-7
#SBATCH --cpus-per-task=4
#SBATCH --time=01:00:00
#SBATCH --output=squeeze-sweep-%A_%a.log
set -euo pipefail

SHARDS=${SLURM_ARRAY_TASK_COUNT:-8}
mkdir -p results
squeeze sweep \
  --model assets/models/lenet-300-100.safetensors \
  --data assets/data/mnist \
  --grid examples/cluster/grid.toml \
  --shard "${SLURM_ARRAY_TASK_ID}/${SHARDS}" \
  --out "results/shard-${SLURM_ARRAY_TASK_ID}.jsonl" \
  --threads "${SLURM_CPUS_PER_TASK:-0}" \
  --no-latency --quiet
