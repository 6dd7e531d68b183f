#!/usr/bin/env bash
# The GPU check over the ways to share one GPU, for a lent GPU machine (about 9 minutes; same needs as
# bench/gpu_check.sh): one process with 8 threads, 4 and 8 processes with 2 threads each, 16 with one (Ray's
# actors sharing a GPU: `execution.actors_per_gpu`), and the machine's CPUs alone with 16 processes.
# JSON and logs go to OUT (default bench/results/gpu_sweep); each run's images/s and stage seconds are printed.
cd "$(dirname "$0")/.." || exit 1
S="$(realpath "${1:?usage: bench/gpu_sweep.sh SHARED [OUT]}")"
OUT="${2:-bench/results/gpu_sweep}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
G=(python3 bench/gpu_check.py --model-dir "$S/models" --photos "$S/data/photos" --budget-s 30)
run() {
  local name=$1 limit=$2 start
  shift 2
  start=$(date +%s)
  timeout "$limit" "${G[@]}" "$@" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  echo "== $name: rc $? in $(($(date +%s) - start)) s"
  grep -E "images/s|stage s|budget" "$OUT/$name.log"
}
run gpu_p1_t8 120 --device cuda --frames 96 --batch 8 --threads 8  # first: writes the derived graphs once
run gpu_p4_t2 110 --device cuda --frames 256 --batch 8 --processes 4 --threads 2
run gpu_p8_t2 120 --device cuda --frames 256 --batch 8 --processes 8 --threads 2
run gpu_p16_t1 130 --device cuda --frames 256 --batch 4 --processes 16 --threads 1
run cpu_p16_t1 110 --device cpu --frames 256 --batch 4 --processes 16 --threads 1
