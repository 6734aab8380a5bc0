#!/usr/bin/env bash
# Install Debian's Prometheus server and promtool (/usr/bin/prometheus, /usr/bin/promtool)
# for `make lint` (promtool check rules / test rules on deploy/prometheus) and for the
# metrics test, which starts its own throwaway server on a free port with a temporary
# storage directory. The package's own service is not used: it is kept from starting,
# and stopped and disabled if it was started anyway, so nothing is left on :9090.
#
# Idempotent: does nothing when both prometheus and promtool are on PATH.
set -euo pipefail

if command -v prometheus > /dev/null && command -v promtool > /dev/null; then
    echo "install-prometheus: $(prometheus --version 2>&1 | head -n1) already present"
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "install-prometheus: installing Debian's prometheus package"
$sudo apt-get update -q
# policy-rc.d answering 101 keeps invoke-rc.d from starting the package's service.
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" > /dev/null
    $sudo chmod +x "$policy"
    created_policy=1
fi
RUNLEVEL=1 $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus || {
    [ -n "$created_policy" ] && $sudo rm -f "$policy"
    exit 1
}
[ -n "$created_policy" ] && $sudo rm -f "$policy"
# Where systemd runs, make sure the package's server is neither running nor enabled.
if command -v systemctl > /dev/null && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus.service > /dev/null 2>&1 || true
fi
prometheus --version 2>&1 | head -n1
promtool --version 2>&1 | head -n1
