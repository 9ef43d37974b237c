#!/usr/bin/env bash
# Builds dist/millgate_<version>_<arch>.deb from this checkout: a venv under /opt/millgate made with
# Debian's python3 holding millgate and its Python dependencies, the systemd unit, the maintainer
# scripts and /etc/millgate as conffiles. Needs python3-venv and dpkg-dev's dpkg-deb (both in Debian).
#
#   packaging/build-deb.sh [OUTDIR]          (default OUTDIR: dist)
#   PIP_INDEX_URL / PIP_FIND_LINKS select where pip finds the dependencies, as usual.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=${1:-$repo/dist}
python=/usr/bin/python3
prefix=/opt/millgate

version=$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$repo/pyproject.toml")
arch=$(dpkg --print-architecture)
# the groups a gateway runs with: every protocol and the cloud; not the test, bench or ML-example tools
extras=modbus,opcua,cloud

work=$(mktemp -d "${TMPDIR:-/tmp}/millgate-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
venv=$root$prefix

echo "building millgate $version ($arch) with extras [$extras]"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile --upgrade pip
# a wheel built from a copy of the checkout, so a dev's .venv, var/ or build leftovers never end up inside
src=$work/src
mkdir "$src"
tar -C "$repo" --exclude=./.venv --exclude=./var --exclude=./dist --exclude='*.egg-info' --exclude=./build \
    --exclude=__pycache__ --exclude=./.git -cf - . | tar -C "$src" -xf -
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile "$src[$extras]"
"$venv/bin/python" -m pip uninstall --quiet --yes pip

# the venv was made at $venv; it will live at $prefix. pip's note of the source checkout goes too.
for dist_info in "$venv"/lib/python3*/site-packages/millgate-*.dist-info; do
    rm -f "$dist_info/direct_url.json"
    sed -i '/direct_url.json/d' "$dist_info/RECORD"
done
find "$venv" -name __pycache__ -type d -prune -exec rm -rf {} +
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1
grep -rlI --null "$venv" "$venv" | xargs -0 -r sed -i "s|$venv|$prefix|g"
ln -sfn python3 "$venv/bin/python"
ln -sfn "$python" "$venv/bin/python3"
# console scripts we do not run (pydantic, boto, moto helpers...) would each need a manpage
find "$venv/bin" -type f ! -name millgate -delete

install -d "$root/usr/bin"
ln -s "$prefix/bin/millgate" "$root/usr/bin/millgate"
install -D -m 0644 "$here/millgate.service" "$root/lib/systemd/system/millgate.service"
install -D -m 0644 "$here/debian/gateway.toml" "$root/etc/millgate/gateway.toml"
install -d -m 0755 "$root/etc/millgate/adapters" "$root/etc/millgate/functions"
doc=$root/usr/share/doc/millgate
install -D -m 0644 "$here/debian/copyright" "$doc/copyright"
install -D -m 0644 "$repo/etc/gateway.example.toml" "$doc/examples/gateway.example.toml"
[ ! -f "$repo/docs/operations.md" ] || install -m 0644 "$repo/docs/operations.md" "$doc/operations.md"
printf 'millgate (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- millgate developers <millgate@example.org>  %s\n' \
    "$version" "$version" "$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")" | gzip -9n >"$doc/changelog.gz"
install -D -m 0644 "$here/debian/lintian-overrides" "$root/usr/share/lintian/overrides/millgate"
install -D -m 0644 "$here/millgate.1" "$root/usr/share/man/man1/millgate.1"
gzip -9n "$root/usr/share/man/man1/millgate.1"

install -d -m 0755 "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/debian/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find etc -type f -printf '/%p\n' | sort) >"$root/DEBIAN/conffiles"
# shared objects from the wheels link against libc and libgcc only (manylinux); say so
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    -e "s/@SHLIBS@/libc6 (>= 2.17), libgcc-s1/" "$here/debian/control.in" >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    >"$root/DEBIAN/md5sums"

mkdir -p "$out"
deb=$out/millgate_${version}_${arch}.deb
fakeroot=""
[ "$(id -u)" -eq 0 ] || fakeroot=fakeroot
$fakeroot dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
