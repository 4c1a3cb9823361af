#!/bin/sh
# Install what tests/s3/server.py runs: OpenStack Swift (with s3api) and memcached, from apt.
# Idempotent; quiet when everything is present or installs cleanly. Without root (or apt) it only
# explains what is missing and exits 0: the S3 tests then skip (or fail, under CI=true). A failed
# install exits 1 under CI=true and 0 otherwise.
set -eu

PACKAGES="swift swift-proxy swift-account swift-container swift-object memcached"
BINARIES="swift-ring-builder swift-proxy-server swift-object-server swift-container-server swift-account-server memcached"

missing=""
for b in $BINARIES; do
    command -v "$b" >/dev/null 2>&1 || missing="$missing $b"
done
[ -z "$missing" ] && exit 0

hint="sudo apt-get install -y --no-install-recommends $PACKAGES"
if [ "$(id -u)" != 0 ]; then
    echo "tests/s3/install.sh: missing$missing; not root, so not installing." >&2
    echo "  Install them with: $hint   (S3 tests skip until then)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/s3/install.sh: missing$missing and no apt-get; install OpenStack Swift and memcached by hand." >&2
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
        echo "tests/s3/install.sh: apt-get failed installing: $PACKAGES" >&2
        tail -n 30 "$log" >&2
        # Fatal in CI, where S3 tests must run; elsewhere they skip.
        [ "${CI:-}" = true ] && exit 1
        exit 0
    fi
fi

for b in $BINARIES; do
    if ! command -v "$b" >/dev/null 2>&1; then
        echo "tests/s3/install.sh: $b still missing after installing: $PACKAGES" >&2
        [ "${CI:-}" = true ] && exit 1
        exit 0
    fi
done
