#!/bin/bash
# One Adam phase as a job array: one task per population member.
#   sbatch --array=0-4 jobs/adam.sh RUN_DIR CYCLE
#SBATCH --job-name=easlurm-adam
#SBATCH --array=0-4
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --signal=USR2@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out
# Slurm runs a copy of this script from its spool dir: find common.sh via EASLURM_JOBS or the submit dir.
jobs_dir="${EASLURM_JOBS:-${SLURM_SUBMIT_DIR:-$(dirname "$(readlink -f "$0")")/..}/jobs}"
source "$jobs_dir/common.sh"
easlurm_need_run_dir "${1:-}"
: "${2:?usage: sbatch jobs/adam.sh RUN_DIR CYCLE}"
easlurm_run "$1" easlurm.train --run "$1" --cycle "$2" --member "${SLURM_ARRAY_TASK_ID:?run as an array job}"
