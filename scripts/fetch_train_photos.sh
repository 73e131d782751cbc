#!/usr/bin/env bash
# Fetch the training photos listed in scripts/train_photos.tsv from their Debian packages.
#
# usage: scripts/fetch_train_photos.sh OUT_DIR [TSV]
#
# Each package is fetched with `apt-get download` into a temporary folder and unpacked with
# `dpkg -x`; only the listed files are copied to OUT_DIR, named PACKAGE__NAME.EXT (NAME is the
# file's stem, or the wallpaper's folder name for plasma's contents/images/WxH.jpg layout).
# Each package's copyright file is copied beside them as PACKAGE.copyright.
# Set DEB_CACHE=DIR to use PACKAGE_*.deb files already in DIR instead of downloading them.
# If apt-get cannot find a package, run `apt-get update` first (Debian bookworm has both).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 OUT_DIR [TSV]" >&2
    exit 2
fi
out=$1
tsv=${2:-"$(dirname "$0")/train_photos.tsv"}
[[ -f $tsv ]] || { echo "error: photo list $tsv not found" >&2; exit 1; }
mkdir -p "$out"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# the unique file name a listed path gets in OUT_DIR
photo_name() {
    local pkg=$1 path=$2 base ext
    base=$(basename "$path")
    ext=${base##*.}
    if [[ $path == */contents/images/* ]]; then
        base=${path%%/contents/images/*}
        base=$(basename "$base")
    else
        base=${base%.*}
    fi
    printf '%s__%s.%s\n' "$pkg" "$base" "$ext"
}

packages=$(awk -F'\t' 'NR > 1 && NF >= 2 {print $1}' "$tsv" | sort -u)
for pkg in $packages; do
    deb=""
    if [[ -n ${DEB_CACHE:-} ]]; then
        deb=$(find "$DEB_CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)
    fi
    if [[ -z $deb ]]; then
        echo "downloading $pkg" >&2
        (cd "$work" && apt-get download "$pkg" >&2) || {
            echo "error: apt-get download $pkg failed (try: apt-get update)" >&2; exit 1; }
        deb=$(find "$work" -maxdepth 1 -name "${pkg}_*.deb" | head -n 1)
    fi
    mkdir -p "$work/root-$pkg"
    dpkg -x "$deb" "$work/root-$pkg"
    if [[ -f $work/root-$pkg/usr/share/doc/$pkg/copyright ]]; then
        cp "$work/root-$pkg/usr/share/doc/$pkg/copyright" "$out/$pkg.copyright"
    fi
done

count=0
while IFS=$'\t' read -r pkg path _; do
    [[ $pkg == package || -z $pkg ]] && continue
    src="$work/root-$pkg/$path"
    [[ -f $src ]] || { echo "error: $path is not in package $pkg" >&2; exit 1; }
    cp "$src" "$out/$(photo_name "$pkg" "$path")"
    count=$((count + 1))
done < "$tsv"
echo "fetched $count photos into $out" >&2
