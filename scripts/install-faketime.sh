#!/usr/bin/env bash
# Installs Debian's `faketime` (libfaketime), for the end-to-end test that runs a worker
# with its clock 20 s ahead (tests/tests/durability.rs). Idempotent: silent when
# `faketime` is already on PATH.
set -euo pipefail
if command -v faketime >/dev/null 2>&1; then
    exit 0
fi
sudo=""
if [[ "$(id -u)" != 0 ]] && command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
fi
if command -v apt-get >/dev/null 2>&1 && { [[ "$(id -u)" == 0 ]] || [[ -n "${sudo}" ]]; }; then
    log="$(mktemp)"
    if ! { ${sudo} apt-get update -qq && DEBIAN_FRONTEND=noninteractive ${sudo} apt-get install -y -qq faketime; } >"${log}" 2>&1; then
        cat "${log}" >&2
        rm -f "${log}"
        echo "install-faketime: apt-get install faketime failed" >&2
        exit 1
    fi
    rm -f "${log}"
else
    echo "install-faketime: faketime is missing; install it (apt-get install faketime)" >&2
    exit 1
fi
command -v faketime >/dev/null 2>&1 || {
    echo "install-faketime: faketime still not on PATH after installing" >&2
    exit 1
}
