#!/bin/bash
# The EA phase of one cycle: objectives, SBX crossover, mutation, MOEA/D or NSGA-II selection.
#   sbatch --dependency=afterok:ARRAY_ID jobs/ea.sh RUN_DIR CYCLE
#SBATCH --job-name=easlurm-ea
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --ntasks=1
#SBATCH --signal=B:USR2@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
# Slurm runs a copy of this script from its spool dir: find common.sh via EASLURM_JOBS or the submit dir.
jobs_dir="${EASLURM_JOBS:-${SLURM_SUBMIT_DIR:-$(dirname "$(readlink -f "$0")")/..}/jobs}"
source "$jobs_dir/common.sh"
easlurm_need_run_dir "${1:-}"
: "${2:?usage: sbatch jobs/ea.sh RUN_DIR CYCLE}"
easlurm_task "$1" "ea/$(printf %03d "$2")" 0
