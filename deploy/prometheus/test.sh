#!/usr/bin/env bash
# Check and unit-test the alert rules with promtool (Debian package `prometheus`).
set -euo pipefail
cd "$(dirname "$0")"
promtool check rules alerts.yml
promtool test rules alerts_test.yml
