#!/bin/bash
# usage: examples/slurm/submit.sh PRESET SHARDS [bench run options...]
# Submits a job array of SHARDS tasks (shard i of SHARDS each, see grid.sbatch) and a merge job that runs after all of
# them (afterany: a shard with a failed cell still merges; rerun the array to retry failed cells, then merge again).
set -euo pipefail
preset=${1:?usage: submit.sh PRESET SHARDS [bench run options...]}
shards=${2:?usage: submit.sh PRESET SHARDS [bench run options...]}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
export PRESET=$preset BENCH_ARGS="$*"
array=$(sbatch --parsable --array=0-$((shards - 1)) --export=ALL "$here/grid.sbatch")
array=${array%%;*}
merge=$(MERGE=1 sbatch --parsable --dependency="afterany:$array" --export=ALL,MERGE=1 --job-name=bench-merge \
        --gres=none --cpus-per-task=1 --mem=8G --time=1:00:00 "$here/grid.sbatch")
echo "submitted shards: job $array (array 0-$((shards - 1))); merge: job ${merge%%;*} -> ${BENCH_RESULTS:-results}/$preset"
