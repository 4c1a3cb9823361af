#!/bin/sh
# Install test tools from apt: tests/apt-install.sh WHAT "PACKAGES" "BINARIES" (WHAT names the
# tests in messages). Idempotent; quiet when every binary is present or installs cleanly.
# Without root (or apt) it only explains what is missing and exits 0: those tests then skip (or
# fail, under CI=true). A failed install exits 1 under CI=true and 0 otherwise.
set -eu

WHAT=$1
PACKAGES=$2
BINARIES=$3

missing=""
for b in $BINARIES; do
    command -v "$b" >/dev/null 2>&1 || missing="$missing $b"
done
[ -z "$missing" ] && exit 0

hint="sudo apt-get install -y --no-install-recommends $PACKAGES"
if [ "$(id -u)" != 0 ]; then
    echo "tests/apt-install.sh ($WHAT): missing$missing; not root, so not installing." >&2
    echo "  Install them with: $hint   ($WHAT tests skip until then)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/apt-install.sh ($WHAT): missing$missing and no apt-get; install $PACKAGES by hand." >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp "${TMPDIR:-/tmp}/ser-ray-s3-install.XXXXXX")
trap 'rm -f "$log"' EXIT

apt_install() {
    apt-get install -y -q --no-install-recommends $PACKAGES >>"$log" 2>&1
}

# Refresh package lists only when installing from the current ones fails (e.g. a fresh image
# with empty lists, or lists older than the mirror).
if ! apt_install; then
    if ! { apt-get update -q >>"$log" 2>&1 && apt_install; }; then
        echo "tests/apt-install.sh ($WHAT): apt-get failed installing: $PACKAGES" >&2
        tail -n 30 "$log" >&2
        # Fatal in CI, where these tests must run; elsewhere they skip.
        [ "${CI:-}" = true ] && exit 1
        exit 0
    fi
fi

for b in $BINARIES; do
    if ! command -v "$b" >/dev/null 2>&1; then
        echo "tests/apt-install.sh ($WHAT): $b still missing after installing: $PACKAGES" >&2
        [ "${CI:-}" = true ] && exit 1
        exit 0
    fi
done
