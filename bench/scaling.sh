#!/usr/bin/env bash
# The multi-core scaling curve, as one prepared run for a borrowed machine (16 cores).
#
#   OUT=/path/to/results bash bench/scaling.sh
#
# lb with 1, 2, 4 and 8 workers against HAProxy with as many threads (bench/run.py --scaling:
# backends and wrk on their own cores, each proxy pinned to N of the others), plus the
# lb_2workers / haproxy_2threads pair on two dedicated cores. Installs wrk, haproxy and nginx
# with apt-get when missing (as root, or through passwordless sudo), builds the venv and the
# Cython extensions when missing, and writes $OUT/scaling.json and $OUT/scaling.log.
# Sized to finish in under 6 minutes: 5 s per run after 1 s of warm-up, 1 round, two shapes
# (64 and 1000 connections); the benchmark itself is cut off at DEADLINE_S after the start.
set -euo pipefail

OUT=${OUT:?set OUT to the directory for the results}
DURATION=${DURATION:-5}
DEADLINE_S=${DEADLINE_S:-340}
REPO=$(cd "$(dirname "$0")/.." && pwd)
START=$(date +%s)
mkdir -p "$OUT"
LOG="$OUT/scaling.log"
exec > >(tee -a "$LOG") 2>&1
cd "$REPO"
echo "scaling.sh: $(nproc) cores, $(uname -r), repo $REPO, results in $OUT"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo -n "$@"; else return 1; fi
}

missing=()
for tool in wrk haproxy nginx taskset; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  packages=("${missing[@]/taskset/util-linux}")
  echo "installing: ${packages[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${packages[@]}" >/dev/null \
    || { echo "scaling.sh: cannot install ${packages[*]} (need root or sudo, and apt-get)"; exit 1; }
fi

if [ ! -x .venv/bin/python ]; then
  echo "building .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip setuptools wheel Cython
  .venv/bin/pip install -q -e .
fi
if ! .venv/bin/python -c "import lb._picker, lb._shm" 2>/dev/null; then
  echo "building the Cython extensions"
  .venv/bin/pip install -q Cython
  .venv/bin/python setup.py -q build_ext --inplace
fi
.venv/bin/python -c "import lb._picker, lb._shm" \
  || { echo "scaling.sh: the compiled extensions did not build; lb --workers needs them"; exit 1; }

left=$((DEADLINE_S - ($(date +%s) - START)))
echo "benchmark: ${DURATION} s per run, cut off after ${left} s"
status=0
timeout --signal=INT "$left" .venv/bin/python bench/run.py \
  --scaling --only lb_2workers,haproxy_2threads --rounds 1 --duration "$DURATION" --warmup 1 \
  --connections 64,1000 --out "$OUT/scaling.json" || status=$?
echo "scaling.sh: done in $(($(date +%s) - START)) s (bench exit $status)"
exit "$status"
