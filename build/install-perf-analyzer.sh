#!/usr/bin/env bash
# Install NVIDIA perf_analyzer for `make bench`, without touching the main virtualenv.
#
# perf_analyzer ships as a C++ binary inside the tritonclient 2.41.0 wheel (installed as
# bin/perf_analyzer under the pip target). Later wheels no longer carry it, and the main
# .venv pins tritonclient 2.73.0 for the gateway, so 2.41.0 goes into a separate folder:
#   .bench-tools/                 (pip --target, project-local, git-ignored)
#     bin/perf_analyzer
#     nvidia/cuda_runtime/lib/    libcudart.so.12 (the binary links it even on CPU-only runs)
# The binary also links libb64.so.0d: Debian package `libb64-0d` (apt, needs root/sudo).
# bench/perf_analyzer.py finds the binary and builds its LD_LIBRARY_PATH.
#
# Idempotent: skips what is already there. Prints the perf_analyzer path last.
# Override the folder with BENCH_TOOLS=/some/dir and the Python with PYTHON=/path/python.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${BENCH_TOOLS:-${ROOT}/.bench-tools}"
TRITONCLIENT_VERSION="2.41.0"
PA="${TOOLS}/bin/perf_analyzer"
CUDART_DIR="${TOOLS}/nvidia/cuda_runtime/lib"

if [[ -n ${PYTHON:-} ]]; then
    PY="${PYTHON}"
elif [[ -x ${ROOT}/.venv/bin/python ]]; then
    PY="${ROOT}/.venv/bin/python"
else
    PY="$(command -v python3 || true)"
fi
[[ -n ${PY} ]] || { echo "install-perf-analyzer: no Python found (run \`make setup\` first)" >&2; exit 1; }

# 1. libb64 (system library, not on PyPI).
if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
    SUDO=""
    if [[ ${EUID} -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "install-perf-analyzer: libb64-0d is missing; run as root or install sudo" >&2; exit 1; }
        SUDO="sudo"
    fi
    command -v apt-get >/dev/null 2>&1 || {
        echo "install-perf-analyzer: no apt-get; install libb64 (libb64.so.0d) by hand" >&2; exit 1; }
    echo "installing libb64-0d (apt)"
    ${SUDO} apt-get update -qq
    ${SUDO} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null
fi

# 2. tritonclient 2.41.0 (perf_analyzer) + CUDA runtime, into the project-local folder.
installed_version() {
    local meta
    meta="$(ls -d "${TOOLS}"/tritonclient-*.dist-info 2>/dev/null | head -n 1 || true)"
    [[ -n ${meta} ]] && basename "${meta}" | sed -e 's/^tritonclient-//' -e 's/\.dist-info$//'
}
if [[ -x ${PA} && -e ${CUDART_DIR}/libcudart.so.12 && "$(installed_version)" == "${TRITONCLIENT_VERSION}" ]]; then
    echo "perf_analyzer ${TRITONCLIENT_VERSION} already installed in ${TOOLS}"
else
    echo "installing tritonclient==${TRITONCLIENT_VERSION} and nvidia-cuda-runtime-cu12 into ${TOOLS}"
    mkdir -p "${TOOLS}"
    # --no-deps: only the binary and libcudart are needed, not tritonclient's Python deps.
    # --upgrade: replace whatever an earlier, different install left in the folder.
    "${PY}" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "${TOOLS}" \
        "tritonclient==${TRITONCLIENT_VERSION}" "nvidia-cuda-runtime-cu12>=12,<13"
fi

# 3. Check that it loads and runs.
[[ -x ${PA} ]] || { echo "install-perf-analyzer: ${PA} missing after install" >&2; exit 1; }
export LD_LIBRARY_PATH="${CUDART_DIR}${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
if missing="$(ldd "${PA}" | grep 'not found')"; then
    echo "install-perf-analyzer: ${PA} still lacks libraries:" >&2
    echo "${missing}" >&2
    exit 1
fi
"${PA}" --version
echo "${PA}"
