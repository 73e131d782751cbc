#!/usr/bin/env bash
# The exact command lines behind the README's performance table; results go to benchmarks/results/.
# No time limit per combination: these runs are meant to finish.
#
#   bash benchmarks/bench_readme.sh        # CPU: what the README table shows
#   bash benchmarks/bench_readme.sh gpu    # CUDA GPU: torch fp32/fp16/CUDA graphs, ONNX Runtime, TensorRT
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
profile=${1:-cpu}

case "$profile" in
cpu)
    # torch fp16 on a CPU has few native kernels (about 10x slower than fp32): measured once, for
    # student_small at 640x360, to show it (--allow-slow-precision); msbdn (about 5 s a 640x360 frame)
    # runs fp32 only. bf16 only where the CPU has native bf16: elsewhere it is emulated, 36x slower.
    bf16=$(python -c 'from unweather.cpu import detect; print("bf16" if detect().native_bf16 else "")')
    unweather bench --models student_small student_base msbdn@640x360 \
        --backends torch onnxruntime --precisions fp32 $bf16 fp16 --allow-slow-precision \
        --resolutions 640x360 1280x720 --frames 6 --repeats 3 --warmup 2 --device cpu --time-limit 0 \
        --exclude backend=torch,precision=fp16,resolution=1280x720 model=student_base,backend=torch,precision=fp16 \
            model=msbdn,precision=bf16 model=msbdn,precision=fp16 \
        --json "$out/bench-cpu.json" --markdown "$out/bench-cpu.md" --plot "$out/bench-cpu.png"
    ;;
gpu)
    unweather bench --models student_small student_base msbdn \
        --backends torch torch:cuda_graph onnxruntime tensorrt --precisions fp32 fp16 \
        --resolutions 1280x720 1920x1080 --frames 64 --repeats 5 --warmup 10 --device cuda --time-limit 0 \
        --json "$out/bench-gpu.json" --markdown "$out/bench-gpu.md" --plot "$out/bench-gpu.png"
    ;;
*)
    echo "usage: $0 [cpu|gpu]" >&2
    exit 2
    ;;
esac
