#!/usr/bin/env bash
# Ensure the Prometheus server binary is installed (Debian package `prometheus`, binary at
# /usr/bin/prometheus). Idempotent: does nothing when `prometheus` is already on PATH.
#
# The package's post-install would normally start a system service; we never rely on it.
# While installing, a temporary /usr/sbin/policy-rc.d (exit 101) forbids service starts
# (unless one already exists), and any prometheus service that got started anyway is
# stopped afterwards. Run Prometheus yourself with:
#   prometheus --config.file=build/prometheus.yml
set -euo pipefail

SUDO=""
if [[ ${EUID} -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-prometheus: run as root or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi

if command -v prometheus >/dev/null 2>&1; then
    echo "prometheus already installed at $(command -v prometheus)"
else
    command -v apt-get >/dev/null 2>&1 || {
        echo "install-prometheus: no apt-get here; install Prometheus >= 2.x by hand" >&2; exit 1; }
    # shellcheck source=build/apt-install-quiet.sh
    source "$(dirname "${BASH_SOURCE[0]}")/apt-install-quiet.sh"
    apt_install_quiet prometheus prometheus
fi

prometheus --version 2>&1 | head -n 1
