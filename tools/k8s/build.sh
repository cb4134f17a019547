#!/usr/bin/env bash
# Builds the control plane the test suite runs, from the Go modules pinned in tools/k8s/go.mod:
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler, into .cache/k8s/<kubernetes>-etcd-<etcd>/ once;
# later runs find them there and build nothing. Prints that folder.
#   bash tools/k8s/build.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version() { awk -v m="$1" '$1 == m && NF >= 2 && $2 ~ /^v/ { print $2; exit }' "$here/go.mod"; }
kubernetes=$(version k8s.io/kubernetes)
etcd=$(version go.etcd.io/etcd/server/v3)
out="$root/.cache/k8s/$kubernetes-etcd-$etcd"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler)
missing=0
for b in "${binaries[@]}"; do [ -x "$out/$b" ] || missing=1; done
if [ "$missing" = 1 ]; then
    echo "building etcd $etcd and Kubernetes $kubernetes into $out (once; a few minutes per binary)" >&2
    started=$SECONDS
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    cd "$here"
    go build -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3
    go build -o "$out.tmp/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler
    rm -rf "$out" && mv "$out.tmp" "$out"
    echo "built in $((SECONDS - started)) s" >&2
fi
echo "$out"
