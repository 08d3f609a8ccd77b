#!/usr/bin/env bash
# Install the B2BUA and everything it runs with on Debian 12, as root.
#
# System packages: Kamailio (the SIP edge, with its Python and TLS modules),
# iproute2 (network namespaces for the demo and the tests), and the peers the
# tests call through the B2BUA: sipp, coturn, baresip. The Python package
# goes into .venv beside this script's checkout, and `b2bua` is linked into
# /usr/local/bin.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "$(id -u)" -ne 0 ]]; then
    echo "error: run as root (sudo $0): it installs Debian packages" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    kamailio kamailio-python3-modules kamailio-tls-modules \
    kamailio-extra-modules \
    sip-tester coturn baresip \
    iproute2 iptables procps tcpdump openssl ca-certificates \
    python3 python3-venv python3-pip >/dev/null

# coturn's package enables a system service on some installs; the tests start
# their own turnserver inside namespaces, so keep the system one stopped.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now coturn >/dev/null 2>&1 || true
    systemctl disable --now kamailio >/dev/null 2>&1 || true
fi

python="${PYTHON:-python3}"
if [[ ! -x "$repo/.venv/bin/python" ]]; then
    "$python" -m venv "$repo/.venv"
fi
"$repo/.venv/bin/python" -m pip install -q --upgrade pip
"$repo/.venv/bin/python" -m pip install -q -e "$repo[test]"
ln -sf "$repo/.venv/bin/b2bua" /usr/local/bin/b2bua
echo "installed: $(b2bua --version) ($repo/.venv)"
