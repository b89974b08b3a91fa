#!/usr/bin/env bash
# Ensure the PostgreSQL server binaries are installed (Debian package `postgresql`: initdb,
# pg_ctl, postgres under /usr/lib/postgresql/<version>/bin, and the `postgres` OS user that
# devtools/postgres_launcher.py runs throwaway test clusters as). Idempotent: does nothing
# when `initdb` is already there.
#
# The package's post-install would normally create and start a system cluster; nothing here
# uses it. While installing, a temporary /usr/sbin/policy-rc.d (exit 101) forbids service
# starts (unless one already exists), and any cluster service that got started anyway is
# stopped afterwards.
set -euo pipefail

SUDO=""
if [[ ${EUID} -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-postgresql: run as root or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi

find_initdb() {
    local found
    found=$(ls -1d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n ${found} ]] || found=$(command -v initdb || true)
    echo "${found}"
}

if [[ -n $(find_initdb) ]]; then
    echo "postgresql already installed at $(dirname "$(find_initdb)")"
else
    command -v apt-get >/dev/null 2>&1 || {
        echo "install-postgresql: no apt-get here; install PostgreSQL >= 13 (initdb, pg_ctl) by hand" >&2; exit 1; }
    # shellcheck source=build/apt-install-quiet.sh
    source "$(dirname "${BASH_SOURCE[0]}")/apt-install-quiet.sh"
    apt_install_quiet postgresql postgresql
fi

"$(find_initdb)" --version
