#!/bin/bash
# One Adam phase as a job array: one task per population member (the array index is the member slot; with
# adam.members_per_task k > 1 it is the task index, task t training the t-th k of the trained slots). Slots that are
# not Adam-trained (population.member0: ea_only | frozen) need no task: leave them out of --array.
#   sbatch --array=0-4 jobs/adam.sh RUN_DIR CYCLE          (cycle run.cycles is the final phase)
#SBATCH --job-name=easlurm-adam
#SBATCH --array=0-4
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --ntasks=1
#SBATCH --signal=B:USR2@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out
# Slurm runs a copy of this script from its spool dir: find common.sh via EASLURM_JOBS or the submit dir.
jobs_dir="${EASLURM_JOBS:-${SLURM_SUBMIT_DIR:-$(dirname "$(readlink -f "$0")")/..}/jobs}"
source "$jobs_dir/common.sh"
easlurm_need_run_dir "${1:-}"
: "${2:?usage: sbatch --array=0-4 jobs/adam.sh RUN_DIR CYCLE}"
easlurm_task "$1" "adam/$(printf %03d "$2")" "${SLURM_ARRAY_TASK_ID:?run as an array job}"
