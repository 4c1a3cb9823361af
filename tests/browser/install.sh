#!/bin/sh
# Install what the report-page tests drive (tests/test_report_page.py): Debian's chromium and its
# chromedriver, from apt (see tests/apt-install.sh: idempotent, skips quietly without root, fatal
# under CI=true).
exec sh "$(dirname "$0")/../apt-install.sh" browser "chromium chromium-driver" "chromium chromedriver"
