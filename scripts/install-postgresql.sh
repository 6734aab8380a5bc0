#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries (initdb, pg_ctl, postgres under
# /usr/lib/postgresql/<version>/bin) for the tests of the PostgreSQL view store. The
# tests start their own throwaway server in a temporary directory; the package's own
# cluster is not used (and is not started here).
#
# Idempotent: does nothing when some /usr/lib/postgresql/*/bin/initdb exists.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null; then
    echo "install-postgresql: $(ls -d /usr/lib/postgresql/*/bin | tail -n1) already present"
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "install-postgresql: installing Debian's postgresql package"
$sudo apt-get update -q
# Do not start the package's cluster: the tests run their own.
RUNLEVEL=1 $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
ls -d /usr/lib/postgresql/*/bin
