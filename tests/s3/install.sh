#!/bin/sh
# Install what tests/s3/server.py runs: OpenStack Swift (with s3api) and memcached, from apt
# (see tests/apt-install.sh: idempotent, skips quietly without root, fatal under CI=true).
exec sh "$(dirname "$0")/../apt-install.sh" S3 \
    "swift swift-proxy swift-account swift-container swift-object memcached" \
    "swift-ring-builder swift-proxy-server swift-object-server swift-container-server swift-account-server memcached"
