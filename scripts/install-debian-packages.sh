#!/usr/bin/env bash
# Installs the Debian packages millgate needs when they are missing (mosquitto >= 2, socat, and
# python3-venv where the interpreter cannot make a venv). Never starts the packaged services.
set -euo pipefail

missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
py=/usr/bin/python3; [ -x "$py" ] || py=python3
"$py" -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)

if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian packages: ${missing[*]}"
    # Debian's mosquitto would start a system broker on port 1883; millgate runs its own.
    policy=/usr/sbin/policy-rc.d
    added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        added_policy=1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    [ -z "$added_policy" ] || $sudo rm -f "$policy"
fi

version=$( (/usr/sbin/mosquitto -h 2>/dev/null || true) | sed -n 's/^mosquitto version \([0-9]*\)\..*/\1/p')
if [ -z "$version" ] || [ "$version" -lt 2 ]; then
    echo "mosquitto >= 2.0 is required (found: ${version:-none}); on Debian 12 apt-get install mosquitto" >&2
    exit 1
fi
