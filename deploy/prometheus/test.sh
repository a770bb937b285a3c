#!/usr/bin/env bash
# make rules-test: the alert rules parse (promtool check rules) and each alert fires, and only
# fires, where its unit tests say (promtool test rules deploy/prometheus/alerts.test.yml).
set -euo pipefail
cd "$(dirname "$0")"
../tools.sh prometheus
promtool check rules alerts.yml
promtool test rules alerts.test.yml
tests=$(grep -c '^  - interval:' alerts.test.yml)
alerts=$(grep -c '^      - alert:' alerts.yml)
# Every alert has a test group and a runbook paragraph.
for a in $(sed -n 's/^      - alert: //p' alerts.yml); do
  grep -q "alertname: $a\$" alerts.test.yml || { echo "no unit test for $a"; exit 1; }
  grep -q "^### $a\$" ../../docs/OPERATIONS.md || { echo "no runbook for $a in docs/OPERATIONS.md (### $a)"; exit 1; }
done
echo "alert rules: $alerts alerts, $tests unit-test groups, each with a runbook"
