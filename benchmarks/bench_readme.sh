#!/usr/bin/env bash
# The exact command lines behind the README's performance table; results go to benchmarks/results/.
#
#   bash benchmarks/bench_readme.sh        # CPU: what the README table shows
#   bash benchmarks/bench_readme.sh gpu    # CUDA GPU: torch fp32/fp16/CUDA graphs, ONNX Runtime, TensorRT
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
profile=${1:-cpu}

case "$profile" in
cpu)
    # torch fp16 on a CPU has no fast kernels (minutes per 720p frame): excluded, and listed as such.
    unweather bench --models student_small student_base msbdn@640x360 \
        --backends torch onnxruntime --precisions fp32 fp16 bf16 \
        --resolutions 640x360 1280x720 --frames 3 --repeats 2 --warmup 1 --device cpu \
        --exclude backend=torch,precision=fp16 model=msbdn,precision=bf16 model=msbdn,precision=fp16 \
        --json "$out/bench_cpu.json" --markdown "$out/bench_cpu.md" --plot "$out/bench_cpu.png"
    ;;
gpu)
    unweather bench --models student_small student_base msbdn \
        --backends torch torch:cuda_graph onnxruntime tensorrt --precisions fp32 fp16 \
        --resolutions 1280x720 1920x1080 --frames 64 --repeats 5 --warmup 10 --device cuda \
        --json "$out/bench_gpu.json" --markdown "$out/bench_gpu.md" --plot "$out/bench_gpu.png"
    ;;
*)
    echo "usage: $0 [cpu|gpu]" >&2
    exit 2
    ;;
esac
