#!/usr/bin/env bash
# What the offline GPU machine ran for docs/benchmarks.md and docs/results.md, from the repository root
# with .carry/ beside the code (docs/offline-gpu.md; `bash benchmarks/make_carry.sh`
# fills .carry/whl and .carry/teacher; `carry-data` below puts the Wikipedia dump and the movie sentences
# into .carry/data). Results go under $OUT (default runs/gpu).
#
#   bash benchmarks/gpu_session.sh carry-data            # on this machine, first
#   bash benchmarks/gpu_session.sh bench                 # CUDA tests + throughput + relation-loss memory
#   bash benchmarks/gpu_session.sh engine                # issue 14: engine vs bare, levers, OD, Triton (< 9 min)
#   bash benchmarks/gpu_session.sh study LABEL STUDENT [demo options...]   # one demo run, in $OUT/LABEL
#   bash benchmarks/gpu_session.sh parallel 'LABEL STUDENT [opts]' ...    # several at once, then collect
# `collect` gathers the runs' scores and last distillation records into $OUT/study.json (and a table).
set -uo pipefail
if [ "${1:-}" = carry-data ]; then
  mkdir -p .carry/data
  python3 -c 'from pretrain_distill.core.assets import movie_sentences_path as m, wikipedia_dump_path as w
print(w()); print(m())' | xargs -I{} cp {} .carry/data/
  exit
fi
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
if [ -z "${GPU_SESSION_READY:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/whl/*.whl
  export GPU_SESSION_READY=1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export DISTILL_TEACHER=$PWD/.carry/teacher
export DISTILL_WIKI_DUMP=$(ls "$PWD"/.carry/data/enwiki-*.bz2)
export DISTILL_MOVIE_SENTENCES=$PWD/.carry/data/movieReviewSnippets_GroundTruth.txt

versions() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import sys, torch, transformers, deepspeed; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "deepspeed", deepspeed.__version__)'
}

case "${1:-}" in
  bench)
    versions | tee "$OUT/versions.txt"
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/objectives/test_relations.py \
      tests/objectives/test_relations_triton.py tests/data/test_masking.py tests/e2e 2>&1 | tail -n 15 | tee "$OUT/tests_cuda.txt"
    timeout 300 python3 benchmarks/distill_throughput.py 2>&1 | tee "$OUT/distill_throughput.md"
    timeout 180 python3 benchmarks/relation_loss_memory.py --device cuda 2>&1 | tee "$OUT/relation_loss_memory.md"
    ;;
  engine)
    # In priority order, each bounded, so one 10-minute device call gets the most important rows first:
    # the sync-free loop and lever tests on CUDA + the Triton kernels compiled after the refactor, then
    # the engine table (MiniLMv2 6L with every lever, HS 6L), then the OD rows of the bare step.
    versions | tee "$OUT/versions.txt"
    timeout 150 python3 -m pytest -q -p no:cacheprovider -m "not slow" tests/engine/test_engine_sync.py \
      tests/engine/test_engine_levers.py tests/objectives/test_relations_triton.py 2>&1 | tail -n 15 | tee "$OUT/tests_engine_cuda.txt"
    timeout 240 python3 benchmarks/engine_throughput.py --objective minilmv2 --student 6L --steps 30 \
      --levers sync,compile,teacher-fp32,micro-x2,zero0 --out "$OUT/engine-work" 2>&1 | grep -v '^distill\|Loading\|Writing' | tee "$OUT/engine_minilmv2.md"
    timeout 100 python3 benchmarks/engine_throughput.py --objective hs --student 6L --steps 30 --levers compile \
      --out "$OUT/engine-work" 2>&1 | grep -v '^distill\|Loading\|Writing' | tee "$OUT/engine_hs.md"
    timeout 60 python3 benchmarks/distill_throughput.py --objectives od --students 6L 2>&1 | tee "$OUT/distill_throughput_od.md"
    rm -rf "$OUT/engine-work"  # checkpoints and shards: not worth bringing back
    ;;
  study)
    label=$2
    student=$3
    shift 3
    start=$SECONDS
    python3 -m pretrain_distill.cli demo --device cuda --student "$student" --out "$OUT/$label" "$@" \
      > "$OUT/$label.log" 2>&1
    echo "exit $? $label $((SECONDS - start)) s"
    ;;
  parallel)
    shift
    for spec in "$@"; do
      # shellcheck disable=SC2086  # each spec is "LABEL STUDENT [demo options]"
      bash "$0" study $spec &
    done
    wait
    versions > "$OUT/versions.txt"
    bash "$0" collect
    ;;
  collect)
    python3 benchmarks/collect_study.py "$OUT"
    ;;
  *)
    sed -n '2,9p' "$0"
    exit 2
    ;;
esac
