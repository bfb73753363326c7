#!/bin/sh
# Installs a single-machine Slurm (slurmctld, slurmd, client, munge) for the
# real Slurm tests in tests/test_slurm*.py. The tests start the daemons
# themselves in a private state directory; this only installs the packages.
set -e
if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
    && command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "slurm.sh: not root, cannot install Slurm; the Slurm tests will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -qq || true
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
