#!/usr/bin/env bash
# GPU check: a smoke test (train, resume, sample), the NCCL path torchrun takes, DDP over every visible GPU when there
# are several, a check that the training step never makes the host wait for the GPU, and the training-throughput
# table (each network at 32 and 64 px: fp32, bf16, channels_last, torch.compile) on one GPU.
#
#     bash benchmarks/gpu_check.sh              # run folders go to $RUNS (default: a new temporary folder)
#
# Prints figures and exits non-zero if any step failed. Nothing here is needed to build or test iddm.
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-$(mktemp -d)}"
failed=0
GPUS=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null)
if ! [[ "$GPUS" =~ ^[0-9]+$ ]] || [ "$GPUS" -lt 1 ]; then
  echo "FAILED: no CUDA GPU visible to torch (device_count: '${GPUS}')"
  exit 1
fi
step() { printf '\n== %s\n' "$*"; }
run() {
  local t0=$SECONDS
  "$@" || { echo "FAILED (exit $?): $*"; failed=1; }
  echo "-- $((SECONDS - t0)) s"
}
speed() { grep -o '[0-9.]* img/s' "$1/train.log" | tail -n 3 | tr '\n' ' '; echo; }
# every launched run logs its DDP consistency check ("ddp check: ... identical on all N ranks"); missing fails
ddp_check() { grep "ddp check: .* identical on all" "$1/train.log" \
  || { echo "FAILED: no ddp consistency line in $1/train.log"; failed=1; }; }

step "devices"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"

step "smoke: the demo profile for 3 epochs on one GPU with --amp, interrupted by nothing; then resume +1, sample"
run iddm dm train --profile demo --epochs 3 --devices 1 --amp --result-path "$RUNS" --run-name smoke --log-every 38
speed "$RUNS/smoke"
run iddm resume "$RUNS/smoke" --epochs 4
run iddm sample "$RUNS/smoke" --sampler dpmpp2m --num 8 --out "$RUNS/smoke-samples"

step "torchrun, one process: the NCCL process-group path that multi-node runs take"
run python -m torch.distributed.run --standalone --nproc-per-node 1 --no-python iddm dm train --profile demo --epochs 2 --amp \
  --result-path "$RUNS" --run-name torchrun1 --log-every 38
ddp_check "$RUNS/torchrun1"

if [ "$GPUS" -eq 1 ]; then
  echo "one GPU: the self-launched DDP step needs two and is skipped"
else
  step "DDP over $GPUS GPUs (self-launched), demo profile, 3 epochs"
  run iddm dm train --profile demo --epochs 3 --amp --result-path "$RUNS" --run-name ddp --log-every 19
  speed "$RUNS/ddp"
  ddp_check "$RUNS/ddp"
fi

step "the training step never waits for the GPU: steps under torch.cuda.set_sync_debug_mode('error')"
run python benchmarks/step_sync_check.py

step "throughput table: every network at 32 and 64 px, batch 128, one GPU: fp32, bf16, channels_last"
run python benchmarks/train_throughput.py --table --batch-size 128 --steps 20 --warmup 5 \
  --variants fp32,bf16,channels_last
step "throughput table: torch.compile (fp32), unet and adm-s at 32 px, batch 128"
run python benchmarks/train_throughput.py --table --batch-size 128 --steps 20 --warmup 5 --variants compile \
  --networks unet,adm-s --sizes 32

step "latent diffusion: autoencoder, pixel and latent diffusion images/s at 64 and 128 px, batch 32"
run python benchmarks/latent_throughput.py --batch-size 32 --steps 10
exit $failed
