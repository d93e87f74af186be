#!/bin/bash
# Joins the shards' results (one line per configuration, the Pareto set marked again).
#SBATCH --job-name=squeeze-merge
#SBATCH --time=00:05:00
#SBATCH --output=squeeze-merge-%j.log
set -euo pipefail
squeeze merge results/shard-*.jsonl --out results/all.jsonl
