#!/usr/bin/env bash
# Build llama.cpp's reference tools (llama-perplexity, -imatrix, -quantize, -bench, -server) once per machine from
# the llama.cpp source vendored in the installed llama-cpp-python's sdist, into a cache keyed by that version (as
# pip's wheel cache does for the library). Reused when present; a lock keeps concurrent callers to one build.
# Env: PY (python of the venv, default python3), EDGEKIT_CACHE (default ~/.cache/edgekit), JOBS (default nproc).
set -euo pipefail

PY=${PY:-python3}
TOOLS=(llama-perplexity llama-imatrix llama-quantize llama-bench llama-server)
VER=$("$PY" -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))") || {
    echo "llama-tools: llama-cpp-python is not installed in $PY; run 'make venv' first" >&2; exit 2; }
CACHE=${EDGEKIT_CACHE:-$HOME/.cache/edgekit}
DEST="$CACHE/llama.cpp-$VER"

have_all() { for t in "${TOOLS[@]}"; do [ -x "$DEST/bin/$t" ] || return 1; done; }
if have_all; then echo "llama-tools: $DEST/bin (cached)"; exit 0; fi

for tool in ninja cmake c++; do
    command -v "$tool" >/dev/null || {
        echo "llama-tools: '$tool' not found; install it (Debian/Ubuntu: apt-get install ninja-build cmake g++)" >&2
        exit 2; }
done

mkdir -p "$CACHE"
exec 9>"$DEST.lock"
flock 9
if have_all; then echo "llama-tools: $DEST/bin (built by a concurrent caller)"; exit 0; fi

WORK=$(mktemp -d "$CACHE/llama.cpp-$VER.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
echo "llama-tools: building llama.cpp tools of llama-cpp-python $VER into $DEST (once per machine; ~20 min on 2 cores)"
"$PY" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VER" -d "$WORK"
tar -xzf "$WORK"/llama_cpp_python-"$VER".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VER/vendor/llama.cpp"
[ -f "$SRC/CMakeLists.txt" ] || { echo "llama-tools: no vendored llama.cpp in the sdist at $SRC" >&2; exit 2; }
# portable CPU build (no -march=native: same choice as the installed wheel), static so the binaries move freely
cmake -S "$SRC" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TOOLS=ON >"$WORK/configure.log" || { cat "$WORK/configure.log" >&2; exit 1; }
cmake --build "$WORK/build" --target "${TOOLS[@]}" -j "${JOBS:-$(nproc)}"
mkdir -p "$WORK/out/bin"
for t in "${TOOLS[@]}"; do cp "$WORK/build/bin/$t" "$WORK/out/bin/"; done
# llama.cpp's own HF -> GGUF converter (with the gguf-py and conversion/ it imports from beside itself), for benchmarks
cp -r "$SRC/convert_hf_to_gguf.py" "$SRC/gguf-py" "$WORK/out/"
if [ -d "$SRC/conversion" ]; then cp -r "$SRC/conversion" "$WORK/out/"; fi
echo "$VER" >"$WORK/out/VERSION"
rm -rf "$DEST"
mv "$WORK/out" "$DEST"
echo "llama-tools: $DEST/bin"
