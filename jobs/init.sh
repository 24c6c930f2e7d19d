#!/bin/bash
# The start population of cycle 0 (the shared pretrained G, a fresh seeded D per slot); CPU only.
#   sbatch [--dependency=afterok:PRETRAIN_ID] jobs/init.sh RUN_DIR
#SBATCH --job-name=easlurm-init
#SBATCH --cpus-per-task=2
#SBATCH --mem=16G
#SBATCH --time=00:30:00
#SBATCH --ntasks=1
#SBATCH --signal=B:USR2@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
# Slurm runs a copy of this script from its spool dir: find common.sh via EASLURM_JOBS or the submit dir.
jobs_dir="${EASLURM_JOBS:-${SLURM_SUBMIT_DIR:-$(dirname "$(readlink -f "$0")")/..}/jobs}"
source "$jobs_dir/common.sh"
easlurm_need_run_dir "${1:-}"
easlurm_task "$1" init 0
