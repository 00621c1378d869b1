#!/usr/bin/env bash
# GPU check (issue 16): one prepared command for a rented NVIDIA GPU machine (H100/H200, about 8
# minutes, no internet). In order:
#   1.  python -m pytest -m gpu -q  (tests/test_gpu.py: CUDA against the CPU in float32, bf16/fp16
#       autocast, on-device MFCC and augmentation, fits with on-device features; the precision x
#       packed fits of tests/models/test_training.py)
#   2.  python -m speechrnn.fit (the default run; bf16-mixed is chosen automatically on GPUs that
#       support it), then test accuracy and the median seconds per epoch from its test_metrics.json
#   3.  benchmarks/train_throughput.py at batch 256, 1024 and 4096 (padded exact path, 101 frames),
#       then packed against padded at batch 1024 with lengths 25-101 frames, cuda, bf16-mixed, with
#       the peak GPU memory of each run (torch.cuda.max_memory_allocated)
#   3b. benchmarks/host_overhead.py: fit's training loop against a bare loop on the same data and
#       model (BiGRU 2 x 128, batch 1024, 101 frames, fit's precision): microseconds per step, the
#       ratio, and the GPU's busy share over the timed steps alone (torch.profiler)
#   4.  benchmarks/compare_pipelines.py: naive librosa pipeline (a) vs feature cache (b) vs
#       on-device features (c) on the synthetic corpus, cuda, bf16
# and samples GPU utilisation and memory with nvidia-smi every 500 ms during steps 2-4.
#
# Every step tees its output to the terminal and to its own file under $OUT (default
# benchmarks/gpu_check_out), runs under its own timeout and never stops the later steps; each
# step's exit status, the device and the figures go to $OUT/summary.txt, printed at the end.
# The whole run keeps within GPU_CHECK_BUDGET_S seconds (default 480): a step gets at most what is
# left, and a step that would get less than a minimum is skipped (recorded as such).
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run    # on a CPU: the same sequence, tiny sizes, in seconds
#   (--device cpu is the same as --dry-run; --device cuda is the default)
#
# $OUT gets at most 8 files (the device tool brings back 8 files, 2 folders deep): summary.txt,
# one log per step, gpu_util.csv, and 0_setup.log only when something had to be installed.
# Bulky outputs (the fit's run folder, dry-run corpora) go to a scratch folder that is removed at
# the end (GPU_CHECK_KEEP_WORK=1 keeps it; its path is in the summary).
#
# Python: the first of $PYTHON, .venv/bin/python, python3 that imports everything the steps need
# is used as it is. Otherwise wheels in .whl/ (if any) are installed offline into the scratch
# folder; failing that, .venv is created and the project installed into it (needs a package index).
# GPU_CHECK_SKIP="2_fit 4_compare_pipelines" leaves steps out (reported as skipped, exit status 1);
# GPU_CHECK_BATCHES="1024 4096" sets the throughput batch sizes on the GPU.
# Exit status: 0 when every step exited 0, else 1.
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2

MODE=gpu
usage() { echo "usage: bash benchmarks/gpu_check.sh [--dry-run | --device cpu|cuda]" >&2; exit 2; }
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dry-run | --device=cpu) MODE=dry ;;
        --device=cuda) MODE=gpu ;;
        --device)
            case "${2:-}" in
                cpu) MODE=dry ;;
                cuda) MODE=gpu ;;
                *) usage ;;
            esac
            shift
            ;;
        -h | --help) sed -n '2,36p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) usage ;;
    esac
    shift
done

OUT_GIVEN="${OUT:-}"
OUT="${OUT:-$REPO/benchmarks/gpu_check_out}"
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
# The default output folder is inside the repository: keep it out of git (and out of the copy of
# the working tree that travels to the GPU machine) without touching the repository's .gitignore.
[ -z "$OUT_GIVEN" ] && [ ! -e "$OUT/.gitignore" ] && echo '*' >"$OUT/.gitignore"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_work.XXXXXX")" || exit 2
SAMPLER_PID=""
cleanup() {
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null
        wait "$SAMPLER_PID" 2>/dev/null
        SAMPLER_PID=""
    fi
    [ "${GPU_CHECK_KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" # the benchmarks import speechrnn from the tree
if [ "$MODE" = dry ]; then
    # Tiny sizes on a CPU that may be busy: one thread avoids oversubscription, which made the dry
    # run several times slower on a loaded 2-core machine.
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    BUDGET_S="${GPU_CHECK_BUDGET_S:-300}"
    MIN_STEP_S=5
else
    BUDGET_S="${GPU_CHECK_BUDGET_S:-430}"
    MIN_STEP_S=20
fi
RESERVE_S=15 # kept back for the figures and the summary at the end
FAILED=0

note() { echo "$*" | tee -a "$SUMMARY"; }

# run_step NAME LOG CAP_S COMMAND...: the command under `timeout`, tee'd to the terminal, to
# $OUT/LOG (appended) and to $WORK/NAME.out; its status goes to the summary. Returns the status.
run_step() {
    local name="$1" log="$2" cap="$3"
    shift 3
    local left=$((BUDGET_S - SECONDS - RESERVE_S))
    local limit=$((cap < left ? cap : left))
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        note "STEP $name status=skipped seconds=0 log=$log (named in GPU_CHECK_SKIP)"
        return 1
    fi
    if [ "$limit" -lt "$MIN_STEP_S" ]; then
        note "STEP $name status=skipped seconds=0 log=$log (only ${left} s of the ${BUDGET_S} s budget left)"
        FAILED=1
        return 1
    fi
    {
        echo
        echo "=== $name (timeout ${limit} s): $*"
    } | tee -a "$OUT/$log"
    local start=$SECONDS started
    started="$(date +%s.%N)"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/$log" "$WORK/$name.out"
    local rc="${PIPESTATUS[0]}"
    printf '%s\t%s\t%s\n' "$name" "$started" "$(date +%s.%N)" >>"$WORK/steps.tsv"
    local extra=""
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && extra=" (timed out after ${limit} s)"
    note "STEP $name status=$rc seconds=$((SECONDS - start)) log=$log$extra"
    [ "$rc" = 0 ] || FAILED=1
    return "$rc"
}

# The last line of pytest's report (passed/failed/skipped counts, or the number collected).
pytest_figure() {
    local line
    line="$(grep -E '(passed|failed|skipped|deselected|error|collected|no tests ran)' "$WORK/$1.out" 2>/dev/null | tail -n 1)"
    note "  pytest: ${line:-no result line found}"
}

note "gpu_check: mode=$MODE, started $(date '+%Y-%m-%d %H:%M:%S %z'), budget ${BUDGET_S} s, OUT=$OUT"
note "repository: $REPO at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'unknown commit')"

# --- 0. a Python that has what the steps need --------------------------------------------------------
NEEDED="import torch, torchaudio, pytorch_lightning, librosa, soundfile, pytest, speechrnn, speechrnn.fit"
PY=""
for candidate in "${PYTHON:-}" "$REPO/.venv/bin/python" python3 python; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
    if "$candidate" -c "$NEEDED" >/dev/null 2>&1; then
        PY="$candidate"
        break
    fi
done
if [ -n "$PY" ]; then
    note "STEP 0_setup status=0 seconds=0 log=- (nothing installed: using $PY)"
else
    SETUP_START=$SECONDS
    SETUP_RC=1
    SETUP_LOG="$OUT/0_setup.log"
    echo "=== 0_setup: no Python here imports what the steps need ($NEEDED)" | tee -a "$SETUP_LOG"
    if compgen -G "$REPO/.whl/*.whl" >/dev/null && command -v python3 >/dev/null; then
        # Offline: wheels carried in .whl/ (see the device notes), installed beside python3's packages.
        echo "=== installing .whl/*.whl into $WORK/site" | tee -a "$SETUP_LOG"
        timeout 300 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" "$REPO"/.whl/*.whl 2>&1 | tee -a "$SETUP_LOG"
        export PYTHONPATH="$PYTHONPATH:$WORK/site"
        python3 -c "$NEEDED" >>"$SETUP_LOG" 2>&1 && PY=python3 && SETUP_RC=0
    fi
    if [ -z "$PY" ]; then
        # --system-site-packages: packages the machine already has (torch, ...) are reused when
        # their versions fit, so pip installs only what is missing.
        echo "=== python3 -m venv --system-site-packages .venv && .venv/bin/pip install -e \".[dev]\"" |
            tee -a "$SETUP_LOG"
        left=$((BUDGET_S - SECONDS - RESERVE_S))
        { [ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv; } 2>&1 | tee -a "$SETUP_LOG"
        # --retries 1 --timeout 10: without a reachable index, fail in seconds rather than minutes
        timeout "$((left < 300 ? (left > 30 ? left : 30) : 300))" .venv/bin/pip install --retries 1 --timeout 10 \
            -e ".[dev]" 2>&1 | tee -a "$SETUP_LOG"
        SETUP_RC="${PIPESTATUS[0]}"
        PY="$REPO/.venv/bin/python"
        [ -x "$PY" ] || PY=python3 # no venv at all: let the steps fail (or pass) with python3, logged
        if [ "$SETUP_RC" = 0 ] && ! "$PY" -c "$NEEDED" >>"$SETUP_LOG" 2>&1; then
            SETUP_RC=1
        fi
    fi
    note "STEP 0_setup status=$SETUP_RC seconds=$((SECONDS - SETUP_START)) log=0_setup.log (python: $PY)"
    [ "$SETUP_RC" = 0 ] || FAILED=1
fi

# --- the device ---------------------------------------------------------------------------------------
HAVE_SMI=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    HAVE_SMI=1
    note "device (nvidia-smi): $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
fi
note "device (torch): $("$PY" -c '
import platform, sys, torch
line = f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__}"
if torch.cuda.is_available():
    name = torch.cuda.get_device_name(0)
    line += f", cuda {torch.version.cuda}, {name}, bf16 supported: {torch.cuda.is_bf16_supported()}"
else:
    line += f", no CUDA device; cpu {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
print(line)
' 2>&1 | tail -n 1)"
if [ "$MODE" = gpu ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    note "WARNING: torch sees no CUDA device: the cuda steps below will fail (use --dry-run on a CPU)"
fi
note "scratch folder: $WORK ($([ "${GPU_CHECK_KEEP_WORK:-0}" = 1 ] && echo kept || echo 'removed at the end'))"
note ""

# --- sizes: the real run, and the same sequence in seconds for --dry-run ----------------------------
if [ "$MODE" = gpu ]; then
    # --trainer.accelerator gpu: fail at once rather than train on the CPU if CUDA is unusable;
    # precision is left to speechrnn's default (bf16-mixed where supported).
    FIT_ARGS=(--trainer.accelerator gpu)
    # synthetic corpus of 3,150 clips (2,100 train: 33 steps of 64 per epoch), 72 steps = 2.2 epochs:
    # the first epoch is measured, not extrapolated, and the warm rate comes from the 39 after it.
    # (g) is left out: it differs from (b) only on the CPU (fused CPU GRU vs nn.GRU).
    COMPARE_ARGS=(--corpus synthetic --clips 3000 --steps 72 --device cuda --precision bf16)
    read -r -a THROUGHPUT_BATCHES <<<"${GPU_CHECK_BATCHES:-256 1024 4096}"
    THROUGHPUT_ARGS=(--device cuda --precision bf16-mixed)
    PACKED_ARGS=(--batch 1024 --min_frames 25 --packed true)
    CAP_PYTEST_GPU=120 CAP_FIT=120 CAP_COMPARE=150 CAP_THROUGHPUT=50
    OVERHEAD_ARGS=(--device cuda --batch 1024 --frames 101 --features 39 --hidden 128 --layers 2 --bidirectional true
        --classes 12 --steps 30 --warmup 10 --repeats 2 --profile false)
    CAP_OVERHEAD=120
else
    # a tiny corpus (below), one epoch: --trainer.max_epochs 1 rather than --trainer.fast_dev_run,
    # which writes no lightning_logs/version_N and so would not exercise the figures' extraction
    FIT_ARGS=(--data AudioFolderDataModule --data.manifest "$WORK/corpus/manifest.csv" --data.cache_dir "$WORK/cache"
        --model.hidden_size 8 --data.batch_size 8 --trainer.max_epochs 1 --trainer.accelerator cpu)
    COMPARE_ARGS=(--corpus synthetic --root "$WORK/bench_synthetic" --clips 1 --steps 2 --warmup_steps 1 --batch 16
        --naive_workers "[0]" --device cpu --precision 32)
    THROUGHPUT_BATCHES=(4)
    THROUGHPUT_ARGS=(--device cpu --precision 32-true --frames 8 --hidden 16 --steps 1 --warmup 1 --repeats 1)
    PACKED_ARGS=(--batch 4 --min_frames 3 --packed true)
    CAP_PYTEST_GPU=60 CAP_FIT=90 CAP_COMPARE=120 CAP_THROUGHPUT=60
    OVERHEAD_ARGS=(--device cpu --steps 5 --warmup 2 --repeats 1 --profile false)
    CAP_OVERHEAD=60
fi

# --- 1. tests -----------------------------------------------------------------------------------------
# On a CPU the GPU-marked tests are skipped (the command still runs).
run_step 1_pytest_gpu 1_pytest_gpu.log "$CAP_PYTEST_GPU" "$PY" -m pytest -m gpu -q -p no:cacheprovider --durations 8
pytest_figure 1_pytest_gpu

# --- GPU utilisation during steps 2-4 -----------------------------------------------------------------
# timestamp added to the issue's query so that samples can be assigned to steps
if [ "$HAVE_SMI" = 1 ]; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
        >"$OUT/gpu_util.csv" 2>/dev/null &
    SAMPLER_PID=$!
fi

# --- 2. the default fit -------------------------------------------------------------------------------
if [ "$MODE" = dry ]; then
    # The default corpus takes ~30 s to generate on a CPU: a tiny wav corpus with a manifest instead.
    run_step 2_prepare_tiny_corpus 2_fit.log 30 "$PY" -c '
import sys
from pathlib import Path
from tests.conftest import write_corpus
print("tiny corpus:", write_corpus(Path(sys.argv[1]), speakers=4, per_class=2))
' "$WORK/corpus"
fi
run_step 2_fit 2_fit.log "$CAP_FIT" "$PY" -m speechrnn.fit "${FIT_ARGS[@]}" \
    --trainer.default_root_dir "$WORK/fit" --trainer.enable_progress_bar false
"$PY" - "$WORK/fit" <<'EOF' 2>&1 | tee -a "$SUMMARY"
import json
import re
import statistics
import sys
from pathlib import Path

runs = sorted(Path(sys.argv[1]).glob("lightning_logs/version_*/test_metrics.json"), key=lambda p: p.stat().st_mtime)
if not runs:
    print(f"  fit: no lightning_logs/version_*/test_metrics.json under {sys.argv[1]}")
    sys.exit(0)
data = json.loads(runs[-1].read_text())
acc = data.get("metrics", {}).get("test/acc")
epochs = data.get("timing", {}).get("epoch_seconds") or []
config = runs[-1].parent / "config.yaml"
match = re.search(r"^\s*precision:\s*(\S+)", config.read_text(), re.M) if config.is_file() else None
print(f"  fit: test accuracy (test/acc) {acc:.4f}" if acc is not None else "  fit: no test/acc in test_metrics.json")
if epochs:
    print(f"  fit: median seconds per epoch {statistics.median(epochs):.2f} over {len(epochs)} epochs "
          f"(first {epochs[0]:.2f} s, total {sum(epochs):.1f} s)")
else:
    print("  fit: no epoch timing in test_metrics.json")
print(f"  fit: precision {match.group(1) if match else 'unknown'}; run folder {runs[-1].parent.name}")
EOF

# --- 3. training throughput at several batch sizes, then packed against padded -------------------------
# train_throughput.py does not report GPU memory, so it runs inside a small wrapper that prints
# torch.cuda.max_memory_allocated; the script's folder goes first on the path, as when Python runs it.
PEAK_WRAPPER='
import os, runpy, sys
import torch
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
try:
    runpy.run_path(script, run_name="__main__")
finally:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        allocated, reserved = torch.cuda.max_memory_allocated() / 2**20, torch.cuda.max_memory_reserved() / 2**20
        print(f"peak GPU memory: {allocated:.0f} MiB allocated, {reserved:.0f} MiB reserved (whole run)")
    else:
        print("peak GPU memory: n/a (CUDA not used)")
'
FIGURES='^(model:|bare PyTorch loop|Lightning fit loop|ratio|bare loop, padded|recurrent layers .*achieved|peak GPU memory)'
for batch in "${THROUGHPUT_BATCHES[@]}"; do
    run_step "3_throughput_b$batch" 3_train_throughput.log "$CAP_THROUGHPUT" \
        "$PY" -c "$PEAK_WRAPPER" benchmarks/train_throughput.py "${THROUGHPUT_ARGS[@]}" --batch "$batch"
    grep -E "$FIGURES" "$WORK/3_throughput_b$batch.out" 2>/dev/null | sed "s/^/  batch $batch: /" | tee -a "$SUMMARY"
done
run_step 3_throughput_packed 3_train_throughput.log "$CAP_THROUGHPUT" \
    "$PY" -c "$PEAK_WRAPPER" benchmarks/train_throughput.py "${THROUGHPUT_ARGS[@]}" "${PACKED_ARGS[@]}"
grep -E "$FIGURES" "$WORK/3_throughput_packed.out" 2>/dev/null | sed "s/^/  packed: /" | tee -a "$SUMMARY"

# --- 3b. fit's loop against a bare loop: host overhead and the GPU's busy share over the timed steps ----
run_step 3b_host_overhead 3_train_throughput.log "$CAP_OVERHEAD" "$PY" benchmarks/host_overhead.py "${OVERHEAD_ARGS[@]}"
grep -E "^(model:|bare loop|Lightning alone|fit's loop|fit / bare)" "$WORK/3b_host_overhead.out" 2>/dev/null |
    sed 's/^/  host overhead: /' | tee -a "$SUMMARY"

# --- 4. pipelines: naive (a) vs feature cache (b) vs on-device features (c) ---------------------------
run_step 4_compare_pipelines 4_compare_pipelines.log "$CAP_COMPARE" \
    "$PY" benchmarks/compare_pipelines.py "${COMPARE_ARGS[@]}"
grep -E '^(corpus:|synthetic corpus:|\| \(|stated targets)' "$WORK/4_compare_pipelines.out" 2>/dev/null |
    sed 's/^/  compare: /' | tee -a "$SUMMARY"

# --- GPU utilisation per step ---------------------------------------------------------------------------
if [ -n "$SAMPLER_PID" ]; then
    kill "$SAMPLER_PID" 2>/dev/null
    wait "$SAMPLER_PID" 2>/dev/null
    SAMPLER_PID=""
    "$PY" - "$OUT/gpu_util.csv" "$WORK/steps.tsv" <<'EOF' 2>&1 | tee -a "$SUMMARY"
import sys
from datetime import datetime

samples = []
for line in open(sys.argv[1]):
    parts = [part.strip() for part in line.split(",")]
    try:
        when = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
        samples.append((when, float(parts[1]), float(parts[2])))
    except (ValueError, IndexError):
        continue
print(f"GPU utilisation (nvidia-smi every 500 ms, {len(samples)} samples in gpu_util.csv):")
for line in open(sys.argv[2]):
    name, start, end = line.rstrip("\n").split("\t")
    if name[0] not in "234":
        continue
    inside = [s for s in samples if float(start) <= s[0] <= float(end)]
    if inside:
        util = [s[1] for s in inside]
        print(f"  {name}: utilisation mean {sum(util) / len(util):.0f} %, max {max(util):.0f} %; "
              f"memory.used max {max(s[2] for s in inside):.0f} MiB ({len(inside)} samples)")
    else:
        print(f"  {name}: no samples")
EOF
else
    note "GPU utilisation: not sampled (no working nvidia-smi)"
fi

note ""
note "FINISHED after $SECONDS s: $([ "$FAILED" = 0 ] && echo 'every step exited 0' || echo 'some steps failed or were skipped')"
echo
echo "===== $SUMMARY ====="
cat "$SUMMARY"
exit "$FAILED"
