#!/bin/bash
# Queues the sweep as a job array and the merge after all of it succeeded.
set -euo pipefail
sweep=$(sbatch --parsable examples/cluster/slurm-sweep.sh)
sbatch --dependency="afterok:${sweep}" examples/cluster/slurm-merge.sh
