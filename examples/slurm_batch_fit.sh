#!/usr/bin/env bash
# Batch inversion of a CXI dataset on a SLURM cluster: one process per node, all GPUs of a node used by it.
#
#   sbatch examples/slurm_batch_fit.sh patterns.cxi results.h5
#
# Each process fits its contiguous share of the chunks (jax.distributed.initialize() reads the SLURM
# environment), writes its parts into results.h5.parts/ on the shared file system, and the last one to finish
# writes results.h5. If the job is killed (time limit, pre-emption), resubmit the same command: --resume
# continues exactly where it stopped. Check or rebuild the merged file at any time with --merge-only.
#SBATCH --job-name=diffscat-batch
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --time=04:00:00
#SBATCH --output=diffscat-batch-%j.log
set -euo pipefail
DATA=${1:?usage: sbatch slurm_batch_fit.sh DATA.cxi RESULTS.h5}
OUT=${2:?usage: sbatch slurm_batch_fit.sh DATA.cxi RESULTS.h5}
CONFIG=${CONFIG:-configs/batch-sphere.toml}
srun diffscat batch-fit "$CONFIG" --data "$DATA" -o "$OUT" --resume --distributed --no-progress
srun --nodes=1 --ntasks=1 diffscat batch-fit "$CONFIG" --data "$DATA" -o "$OUT" --merge-only
