#!/bin/sh
# Installs Debian's headless-capable chromium and its chromedriver for the
# dashboard's browser tests (tests/test_dashboard.py, driven with selenium).
# Root only; never fails the run: without chromium the browser tests skip.
if command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium.sh: not root or no apt-get; the browser tests will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
    || echo "chromium.sh: could not install chromium; the browser tests will skip" >&2
exit 0
