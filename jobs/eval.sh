#!/bin/bash
# Evaluation of every final member and the fused model: results.csv, results.md, pareto.png.
#   sbatch jobs/eval.sh RUN_DIR [NAME=PATH ...]
#SBATCH --job-name=easlurm-eval
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=01:00:00
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
# Slurm runs a copy of this script from its spool dir: find common.sh via EASLURM_JOBS or the submit dir.
jobs_dir="${EASLURM_JOBS:-${SLURM_SUBMIT_DIR:-$(dirname "$(readlink -f "$0")")/..}/jobs}"
source "$jobs_dir/common.sh"
easlurm_need_run_dir "${1:-}"
run_dir="$1"; shift
sets=()
for s in "$@"; do sets+=(--sets "$s"); done
easlurm_run "$run_dir" easlurm.evaluate --run "$run_dir" "${sets[@]}"
