#!/usr/bin/env bash
# Issue 14's GPU acceptance run, for a machine with a CUDA GPU and no network (not yet run on one).
#
# Steps (default: all three, in this order; each prints its wall time):
#   fgsm-rs  train configs/mnist_madry_fgsm_rs.toml (cnn-large, FGSM-RS at eps 0.3), then PGD-50 x 10 restarts
#   pgd40    train configs/mnist_madry_pgd.toml (cnn-large, PGD-40 at eps 0.3), then PGD-50 x 10 restarts
#   bench    benchmarks/training_throughput.py: PreAct ResNet-18 on CIFAR-10-shaped data, standard / FGSM-RS /
#            PGD-10 training and PGD-20 evaluation against their floors, with and without bf16, channels-last
#            and torch.compile
# Each recipe step prints one line: the test accuracy after training (clean), the clean and PGD-50x10 accuracy
# of the evaluation, the training seconds and the step's wall time. The estimates in the recipes' headers are
# that PGD-40 trains in under 10 minutes on an H200 and FGSM-RS in under 2; this script measures them.
#
# MNIST must be on the machine: copy the four IDX files into data/mnist/ of the repository (ignored by git) and
# carry data/ along, or set TRUSTLAB_DATA to a data root holding mnist/. Nothing is downloaded.
#
# Usage: benchmarks/gpu_acceptance.sh [--dry-run] [--smoke] [--device DEV] [--runs DIR] [--python PY]
#                                     [--train-flags "FLAGS"] [STEP...]
#   --dry-run      print the commands, run nothing
#   --smoke        a tiny run of the same commands (200 examples, 1 epoch, PGD-2, the benchmark's --quick), to
#                  check the script on any machine before spending GPU time on it
#   --device DEV   cuda (default), cuda:N, cpu or auto
#   --runs DIR     where the run folders go (default runs/gpu-acceptance)
#   --python PY    the Python with torch (default python3)
#   --train-flags  extra flags for both trainings, e.g. "--precision bf16 --channels-last" (default none: fp32)
# Within a 10-minute limit per command, run the steps one per call: `... fgsm-rs`, `... pgd40`, `... bench`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0 SMOKE=0 DEVICE=cuda RUNS="$REPO/runs/gpu-acceptance" PY=python3 TRAIN_FLAGS="" STEPS=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
die() { echo "gpu_acceptance.sh: error: $*" >&2; exit 2; }

while (($#)); do
    case "$1" in
        --dry-run) DRY=1 ;;
        --smoke) SMOKE=1 ;;
        --device) [[ $# -ge 2 ]] || die "--device needs a value"; DEVICE="$2"; shift ;;
        --runs) [[ $# -ge 2 ]] || die "--runs needs a value"; RUNS="$2"; shift ;;
        --python) [[ $# -ge 2 ]] || die "--python needs a value"; PY="$2"; shift ;;
        --train-flags) [[ $# -ge 2 ]] || die "--train-flags needs a value"; TRAIN_FLAGS="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        fgsm-rs|pgd40|bench) STEPS+=("$1") ;;
        *) die "unknown argument '$1' (steps: fgsm-rs, pgd40, bench; see --help)" ;;
    esac
    shift
done
((${#STEPS[@]})) || STEPS=(fgsm-rs pgd40 bench)

if [[ -z "${TRUSTLAB_DATA:-}" ]]; then
    export TRUSTLAB_DATA="$REPO/data"
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
TRAIN_SMOKE=() ATTACK_SMOKE=() BENCH_SMOKE=()
if ((SMOKE)); then
    TRAIN_SMOKE=(--subset 200 --epochs 1 --eval-batch-size 200)
    ATTACK_SMOKE=(--subset 50 --steps 2 --restarts 1)
    BENCH_SMOKE=(--quick)
fi

run() {  # print the command; run it unless --dry-run
    echo "+ $*"
    ((DRY)) || "$@"
}

recipe() {  # recipe STEP CONFIG: train, evaluate with PGD-50 x 10, print one result line
    local step="$1" config="$2" out="$RUNS/$1" t0 t1 t2
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086  # TRAIN_FLAGS is a list of flags
    run "$PY" -m trustlab --quiet train --config "$REPO/$config" --out "$out" --device "$DEVICE" --overwrite \
        ${TRAIN_FLAGS} "${TRAIN_SMOKE[@]}"
    t1=$(date +%s.%N)
    run "$PY" -m trustlab --quiet attack "$out" --attack pgd --eps 0.3 --steps 50 --step-size 0.01 --restarts 10 \
        --device "$DEVICE" "${ATTACK_SMOKE[@]}"
    t2=$(date +%s.%N)
    ((DRY)) && return 0
    "$PY" - "$out" "$step" "$t0" "$t1" "$t2" <<'EOF'
import json, sys
from pathlib import Path
out, step, t0, t1, t2 = Path(sys.argv[1]), sys.argv[2], *map(float, sys.argv[3:])
train = json.loads((out / "summary.json").read_text())
config = json.loads((out / "config.json").read_text())
(folder,) = [p for p in (out / "attacks").iterdir() if not p.name.startswith(".")]
attack = json.loads((folder / "summary.json").read_text())
pgd = json.loads((folder / "config.json").read_text())["attack"]
print(f"RESULT {step}: device {config['runtime'].get('device_name', config['runtime']['device'])}, "
      f"precision {config['config']['precision']}, channels_last {config['config']['channels_last']}, "
      f"compile {config['config']['compile']}; test accuracy {train['test_acc']:.4f} after {train['epochs']} "
      f"epochs; PGD-{pgd['steps']}x{pgd['restarts']} on {attack['n']}: clean {attack['clean_acc']:.4f}, robust {attack['robust_acc']:.4f}; "
      f"training {train['train_seconds']:.1f} s, train wall {t1 - t0:.1f} s, attack wall {t2 - t1:.1f} s")
EOF
}

echo "gpu_acceptance.sh: steps ${STEPS[*]}, device $DEVICE, runs in $RUNS, TRUSTLAB_DATA=$TRUSTLAB_DATA$( ((SMOKE)) && echo ', smoke run')"
if ! ((DRY)); then
    for step in "${STEPS[@]}"; do
        if [[ "$step" != bench && ! -f "$TRUSTLAB_DATA/mnist/train-images-idx3-ubyte.gz" ]]; then
            die "MNIST not found under $TRUSTLAB_DATA/mnist/: copy the four IDX files there (the machine has no network)"
        fi
    done
    "$PY" -c "import torch, sys; d = torch.device('$DEVICE' if '$DEVICE' != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')); print('torch', torch.__version__, 'python', sys.version.split()[0], '|', torch.cuda.get_device_name(d) if d.type == 'cuda' else 'cpu')"
    mkdir -p "$RUNS"
fi

for step in "${STEPS[@]}"; do
    start=$(date +%s.%N)
    case "$step" in
        fgsm-rs) recipe fgsm-rs configs/mnist_madry_fgsm_rs.toml ;;
        pgd40) recipe pgd40 configs/mnist_madry_pgd.toml ;;
        bench)
            variants=(--variants fp32 bf16 channels-last compile bf16+channels-last bf16+channels-last+compile)
            ((SMOKE)) && variants=()  # --quick's: fp32, bf16, channels-last (compiling takes minutes on a CPU)
            run "$PY" "$REPO/benchmarks/training_throughput.py" --device "$DEVICE" "${variants[@]}" \
                "${BENCH_SMOKE[@]}" ;;
    esac
    ((DRY)) || echo "WALL $step: $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
done
