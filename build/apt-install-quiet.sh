# Sourced by the build/install-*.sh scripts: apt_install_quiet PACKAGE SERVICE installs Debian's
# PACKAGE without letting its post-install start SERVICE. While installing, a temporary
# /usr/sbin/policy-rc.d (exit 101) forbids service starts (unless one already exists), and a
# SERVICE that got started anyway is stopped afterwards: nothing here relies on system services.
# Uses ${SUDO} (empty when root), set by the caller.

apt_install_quiet() {
    local package=$1 service=$2
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e ${policy} ]]; then
        printf '#!/bin/sh\nexit 101\n' | ${SUDO} tee "${policy}" >/dev/null
        ${SUDO} chmod 755 "${policy}"
        made_policy=1
    fi
    local status=0
    { ${SUDO} apt-get update -qq &&
      ${SUDO} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${package}"; } ||
        status=$?
    if [[ ${made_policy} -eq 1 ]]; then ${SUDO} rm -f "${policy}"; fi
    [[ ${status} -eq 0 ]] || return "${status}"
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        ${SUDO} systemctl stop "${service}.service" >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        ${SUDO} service "${service}" stop >/dev/null 2>&1 || true
    fi
}
