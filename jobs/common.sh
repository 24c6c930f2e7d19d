# Sourced by the jobs/*.sh sbatch scripts: run one task of a run's plan, inside the Apptainer image when
# EASLURM_IMAGE is set.
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

easlurm_command() {  # easlurm_command RUN_DIR: fills the array CMD with the interpreter (inside the image when set)
    local run_dir="$1"
    CMD=("${EASLURM_PYTHON:-python}")
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
        CMD=("$app" exec --cleanenv --env PYTHONNOUSERSITE=1 --nv "${binds[@]}" "$EASLURM_IMAGE" python)
    fi
}

# easlurm_task RUN_DIR STAGE INDEX: run one task of the run's plan, as the launcher's own scripts do
# (easlurm/orchestrate/sbatch.py): the task is a child of this batch shell, which forwards the pre-timeout signal
# (submit with --signal=B:USR2@SECONDS) and SIGTERM to it; a task that committed its checkpoint at the signal
# exits 140 and the job is requeued from here, on the host, where scontrol exists even when the image has no Slurm
# commands. It continues from that checkpoint in its next allocation.
easlurm_task() {
    local run_dir="$1" stage="$2" index="$3" me child rc
    easlurm_command "$run_dir"
    if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then me="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"; else me="${SLURM_JOB_ID:-}"; fi
    echo "[easlurm] $(date +%FT%T) job ${me:-none} $stage task $index on $(hostname), restart ${SLURM_RESTART_COUNT:-0}"
    export PYTHONUNBUFFERED=1
    # >>> supervise: the lines of easlurm.orchestrate.sbatch.supervise (tests/test_sbatch.py compares them)
    "${CMD[@]}" -u -m easlurm.orchestrate.runner "$run_dir" "$stage" "$index" &
    child=$!
    trap 'kill -USR2 "$child" 2>/dev/null' USR2
    trap 'kill -TERM "$child" 2>/dev/null' TERM
    set +e
    while kill -0 "$child" 2>/dev/null; do wait "$child"; done
    wait "$child"; rc=$?
    if [ "$rc" -eq 140 ] && [ -n "$me" ]; then
        echo "[easlurm] $(date +%FT%T) checkpoint committed at the pre-timeout signal; requeueing $me"
        scontrol requeue "$me" && exit 0
        echo "[easlurm] requeue refused or scontrol missing: the launcher resubmits this task (or relaunch with --resume)"
    fi
    exit "$rc"
    # <<< supervise
}

easlurm_need_run_dir() {  # fail early, naming the problem, instead of inside the container
    if [ -z "${1:-}" ] || [ ! -f "$1/config.yaml" ]; then
        echo "error: first argument must be an easlurm run directory (with config.yaml), got '${1:-}'" >&2
        exit 2
    fi
}
