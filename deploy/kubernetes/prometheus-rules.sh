#!/usr/bin/env bash
# Prints deploy/prometheus/recording.yml and alerts.yml as two PrometheusRule objects
# (monitoring.coreos.com/v1) for the Prometheus Operator: a PrometheusRule's spec is a
# rule file, so each file is its spec, indented. Apply them beside an overlay:
#
#   deploy/kubernetes/prometheus-rules.sh | kubectl apply -n onhand -f -
#
# Kustomize cannot wrap a file into an object, hence a script; it reads the rule files as
# they are, so the objects never go stale.
set -euo pipefail
cd "$(dirname "$0")/../prometheus"

for file in recording.yml alerts.yml; do
    name=onhand-${file%.yml}
    cat <<HEADER
---
# From deploy/prometheus/$file.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: $name
  labels:
    app.kubernetes.io/name: onhand
spec:
HEADER
    # Two spaces before every line: block scalars keep their own indentation.
    sed 's/^/  /' "$file"
done
