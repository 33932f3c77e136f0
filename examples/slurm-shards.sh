#!/usr/bin/env bash
# A Slurm job array that shares one pdbench run over N nodes: task K runs
# shard K/N of the same run into its own folder; a dependent job merges
# them (`pdbench merge` refuses shards that disagree on commit, models,
# configs or budget, and names any shard that is missing or unfinished).
#
# usage: sbatch --array=1-4 examples/slurm-shards.sh   (N = the array size)
#        then, once all tasks finished:
#        pdbench merge results/humaneval-shard{1..4} --out results/humaneval
#        (or submit the merge with --dependency=afterok:<array job id>)
#SBATCH --job-name=pdbench
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
set -euo pipefail
n=${SLURM_ARRAY_TASK_COUNT:?run as a job array: sbatch --array=1-N}
k=${SLURM_ARRAY_TASK_ID:?run as a job array}
# An interrupted task resumes where it stopped when resubmitted.
if [ -f "results/humaneval-shard$k/manifest.json" ]; then
  exec pdbench run --resume "results/humaneval-shard$k" --no-report
fi
exec pdbench run --suite humaneval --model qwen2.5-coder-1.5b \
  --draft qwen2.5-coder-0.5b --method ar --method sps --method pld \
  --threads "$SLURM_CPUS_PER_TASK" --shard "$k/$n" \
  --run-id "humaneval-shard$k" --no-report
