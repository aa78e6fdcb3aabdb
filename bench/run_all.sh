#!/usr/bin/env bash
# Every benchmark, one after the other, in the development environment (scripts/dev_env.sh):
#   bench/bench_core.py      loading the official .ckpt vs the compact file, encoder time (full size)
#   bench/bench_sampling.py  per-step cost of DEADiff vs unpatched SD1.5 and vs the floor, K/V reuse, memory
# On the CI machine class (2 cores, no GPU) both take about 5.5 minutes in total (325 s in the run
# docs/performance.md quotes); other work on the machine slows every figure (compare figures within one
# run only).
#
#   bash bench/run_all.sh            # the full run (what docs/benchmarks.md and docs/performance.md quote)
#   bash bench/run_all.sh --quick    # a smoke run: tiny DEADiff dims for bench_core, 32x32 only for sampling
#
# BENCH_CORE_ARGS / BENCH_SAMPLING_ARGS add arguments (e.g. BENCH_CORE_ARGS="--ckpt deadiff_v1.ckpt").
# On a CUDA machine bench_sampling.py runs its GPU part instead of the CPU one (fp16, 512x512, 20 steps).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_lines="$(bash "$repo/scripts/dev_env.sh")"
export $(echo "$env_lines" | grep '^COMFYUI_DIR=')
py="$(echo "$env_lines" | sed -n 's/^VENV=//p')/bin/python"
export TQDM_DISABLE=1  # no progress bars in the logs
cd "$repo"

core_args=()
sampling_args=()
if [ "${1:-}" = "--quick" ]; then
    core_args+=(--small)
    sampling_args+=(--quick)
fi
read -r -a extra_core <<< "${BENCH_CORE_ARGS:-}"
read -r -a extra_sampling <<< "${BENCH_SAMPLING_ARGS:-}"

start=$(date +%s)
echo "== bench/bench_core.py ${core_args[*]} ${extra_core[*]}"
"$py" bench/bench_core.py "${core_args[@]}" "${extra_core[@]}"
core_done=$(date +%s)
echo "(bench_core: $((core_done - start)) s)"
echo
echo "== bench/bench_sampling.py ${sampling_args[*]} ${extra_sampling[*]}"
"$py" bench/bench_sampling.py "${sampling_args[@]}" "${extra_sampling[@]}"
end=$(date +%s)
echo "(bench_sampling: $((end - core_done)) s)"
echo "all benchmarks: $((end - start)) s"
