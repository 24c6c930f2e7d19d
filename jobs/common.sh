# Sourced by the jobs/*.sh sbatch scripts: run a stage CLI, inside the Apptainer image when EASLURM_IMAGE is set.
#   EASLURM_IMAGE   path of easlurm.sif (unset: use the python on PATH, e.g. an activated venv)
#   EASLURM_BINDS   extra comma-separated bind mounts (data folders, weights); the run dir is always bound
#   EASLURM_PYTHON  interpreter outside a container (default: python)
set -euo pipefail

easlurm_run() {  # easlurm_run RUN_DIR MODULE ARGS...
    local run_dir="$1"; shift
    if [ -n "${EASLURM_IMAGE:-}" ]; then
        local binds=(--bind "$run_dir")
        if [ -n "${EASLURM_BINDS:-}" ]; then
            local b
            IFS=',' read -ra extra <<< "$EASLURM_BINDS"
            for b in "${extra[@]}"; do binds+=(--bind "$b"); done
        fi
        exec "${APPTAINER:-apptainer}" exec --nv "${binds[@]}" "$EASLURM_IMAGE" python -m "$@"
    fi
    exec "${EASLURM_PYTHON:-python}" -m "$@"
}

easlurm_need_run_dir() {  # fail early, naming the problem, instead of inside the container
    if [ -z "${1:-}" ] || [ ! -f "$1/config.yaml" ]; then
        echo "error: first argument must be an easlurm run directory (with config.yaml), got '${1:-}'" >&2
        exit 2
    fi
}
