# Sourced by the jobs/*.sh sbatch scripts: run a stage CLI, inside the Apptainer image when EASLURM_IMAGE is set.
#   EASLURM_IMAGE   path of easlurm.sif (unset: use the python on PATH, e.g. an activated venv)
#   EASLURM_BINDS   extra comma-separated bind mounts (data folders, weights); the run dir is always bound
#   EASLURM_PYTHON  interpreter outside a container (default: python)
#   APPTAINER       the runtime binary (default: apptainer; a path to singularity works too)
set -euo pipefail

# The container runs with --cleanenv (host PYTHONPATH, LD_PRELOAD, module variables … stay out) and
# PYTHONNOUSERSITE=1 (~/.local packages cannot shadow the image's torch). What the job needs from the host is
# forwarded by name as APPTAINERENV_<NAME>, which --cleanenv lets through and which, unlike --env, keeps commas in
# values (CUDA_VISIBLE_DEVICES=0,1). Keep this list in step with easlurm/orchestrate/container.py (a test checks).
easlurm_forward_env() {  # easlurm_forward_env PREFIX
    local v
    for v in ${!SLURM_@} ${!SLURMD_@} ${!EASLURM_@} \
             CUDA_VISIBLE_DEVICES OMP_NUM_THREADS MKL_NUM_THREADS HDF5_USE_FILE_LOCKING; do
        case $v in EASLURM_CACHE) continue;; esac  # the image's converted weights live at its own cache
        if [[ -v $v ]]; then export "$1$v=${!v}"; fi
    done
}

easlurm_run() {  # easlurm_run RUN_DIR MODULE ARGS...
    local run_dir="$1"; shift
    if [ -n "${EASLURM_IMAGE:-}" ]; then
        local app="${APPTAINER:-apptainer}" prefix=APPTAINERENV_
        case "$(basename "$app")" in singularity*) prefix=SINGULARITYENV_;; esac
        local binds=(--bind "$run_dir")
        if [ -n "${EASLURM_BINDS:-}" ]; then
            local b
            IFS=',' read -ra extra <<< "$EASLURM_BINDS"
            for b in "${extra[@]}"; do binds+=(--bind "$b"); done
        fi
        easlurm_forward_env "$prefix"
        exec "$app" exec --cleanenv --env PYTHONNOUSERSITE=1 --nv "${binds[@]}" "$EASLURM_IMAGE" python -m "$@"
    fi
    exec "${EASLURM_PYTHON:-python}" -m "$@"
}

easlurm_need_run_dir() {  # fail early, naming the problem, instead of inside the container
    if [ -z "${1:-}" ] || [ ! -f "$1/config.yaml" ]; then
        echo "error: first argument must be an easlurm run directory (with config.yaml), got '${1:-}'" >&2
        exit 2
    fi
}
