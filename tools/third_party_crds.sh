#!/usr/bin/env bash
# The CRDs of the projects the chart and its examples write objects for, from their Go modules
# (pinned here), copied into .cache/crds/ once; prints that folder. The chart tests validate the
# rendered ServiceMonitor/PodMonitor and the KEDA ScaledObject example against them.
set -euo pipefail
cd "$(dirname "$0")/.."
PROMETHEUS_OPERATOR="github.com/prometheus-operator/prometheus-operator@v0.80.1"
KEDA="github.com/kedacore/keda/v2@v2.16.1"
out="$PWD/.cache/crds"
wanted=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_podmonitors.yaml keda.sh_scaledobjects.yaml)
have=1
for f in "${wanted[@]}"; do [ -s "$out/$f" ] || have=0; done
if [ "$have" = 0 ]; then
  module_dir() { go mod download -json "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'; }
  po=$(module_dir "$PROMETHEUS_OPERATOR")
  keda=$(module_dir "$KEDA")
  mkdir -p "$out"
  cp "$po/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
     "$po/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" \
     "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" "$out/"
  chmod u+w "$out"/*.yaml
fi
echo "$out"
