#!/usr/bin/env bash
# Installs the Debian tools `make deb` and `make package-test` use when they are missing
# (lintian, debootstrap, fakeroot when not root, python3-venv). Never starts services.
set -euo pipefail

missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
[ "$(id -u)" -eq 0 ] || dpkg-query -W fakeroot >/dev/null 2>&1 || missing+=(fakeroot)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
