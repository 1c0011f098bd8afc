#!/usr/bin/env bash
# Run HERE (a machine with pip access), before a GPU check: downloads into .whl/ the wheels that the
# lent GPU machines' image lacks for `import controlfoley` (it has torch, timm, einops, jaxtyping,
# numpy, scipy, numba, scikit-learn, joblib, lazy-loader, msgpack, safetensors, tqdm, pytest; see
# ../.library/device/KINDS.md; beartype: the test suite's runtime type checks; av (PyAV, 36 MB): the pipeline's CUDA tests). Versions are the ones this repo's .venv tests with. About 40 MB.
# Then carry `.whl` in the device call that runs benchmarks/gpu_check.sh.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    librosa==0.11.0 audioread==3.1.0 decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.8 beartype==0.23.1 av==18.1.0 \
    soundfile==0.14.0 soxr==1.1.0 cffi==2.1.1 pycparser==3.12
ls -1 .whl
