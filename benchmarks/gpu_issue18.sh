#!/usr/bin/env bash
# Issue 18's accelerator measurements as ONE prepared run (about 6-8 minutes on one H200), for a session that is
# lent a GPU. Everything is bf16 on random models built from configs (no weights to download); each mode runs in
# a fresh process (benchmarks.common.run_fresh), output goes to $OUT (or ./gpu_out) as one log per command.
#
# The device machine has torch, transformers and the rest, but no captum and maybe another transformers: bring
# them as wheels (here, once, in the repo root; .whl is not tracked):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl captum==0.8.0 transformers==5.24.0
# then call the device tool:  run(command="bash benchmarks/gpu_issue18.sh", carry=[".whl"], timeout_s=590)
# A dry run on CPU (tiny sizes, to check the script itself): DEVICE=cpu SMALL=1 bash benchmarks/gpu_issue18.sh
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="src:.:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
DEVICE="${DEVICE:-cuda}"
DTYPE="${DTYPE:-bfloat16}"
PY="${PY:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.txt" 2>&1 || true
$PY -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())" \
    >> "$OUT/device.txt" 2>&1

# model sizes: the CPU tables' shapes, and a 7B-shaped layer stack (hidden 4096, 32 heads) at LLaVA-NeXT length
if [ "${SMALL:-0}" = 1 ]; then
    MID="--layers 2 --hidden 128 --image-size 56"; BIG="--layers 1 --hidden 128 --heads 2 --image-size 56 --tiles 4"
    CHUNK=32
else
    MID="--layers 12 --hidden 768"; BIG="--layers 4 --hidden 4096 --heads 32 --tiles 4"; CHUNK=2048
fi
GRAD="forward,forward_backward,forward_backward_tail,vjp_floor,relevancy,attention_x_gradient,input_x_gradient"
run() {  # name, then attribution_cost arguments
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    timeout 200 $PY -m benchmarks.attribution_cost --device "$DEVICE" --dtype "$DTYPE" --repeats 5 "$@" \
        > "$OUT/$name.log" 2>&1
    echo "   exit $?" >> "$OUT/summary.txt"
    grep -E "/ forward|/ floor|goal|model:" "$OUT/$name.log" >> "$OUT/summary.txt"
}
# 1. every answer token vs one forward + backward, 10 and 100 tokens; batched targets are the accelerator's default
run answers $MID --answer-lens 10,100 --modes "$GRAD"
# 2. the same with one target per backward (target_batch=1), to see what batching buys on the device
run answers_tb1 $MID --answer-lens 10 --modes relevancy,attention_x_gradient,input_x_gradient,forward_backward --target-batch 1
# 3. 7B-shaped layers at LLaVA-NeXT length (base + 4 tiles, ~2,900 positions): attention memory / time, and
#    relevancy with the default row-chunk budget (32 MiB) vs larger chunks
run long7b $BIG --answer-lens 10 --modes forward,attention,forward_backward,relevancy,attention_x_gradient
run long7b_bigchunk $BIG --answer-lens 10 --modes forward_backward,relevancy,attention_x_gradient --attention-chunk $CHUNK
# 4. Integrated Gradients vs a direct Captum call (like for like: with and without the convergence delta)
run ig $MID --answer-lens 1,5 --ig-steps 32 --modes ig_mmlens,ig_mmlens_nodelta,ig_embeds,ig_embeds_delta
cat "$OUT/summary.txt"
