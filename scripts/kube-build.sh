#!/usr/bin/env bash
# Builds the real Kubernetes control plane the operator's tests run on: etcd, kube-apiserver and
# kube-controller-manager, and kubectl of the same release (`make test` puts it first on PATH, so
# every test uses this one), from their Go modules (scripts/kube/go.mod and scripts/kube/etcd/go.mod,
# pinned by their go.sum), with the Go toolchain and the Go module proxy. Nothing is downloaded
# from a release site.
#
# The binaries go to a cache outside the work tree, keyed by the versions and by the hash of both
# go.sum files, so a machine builds them once (a cold build takes tens of minutes on 2 cores; see
# README) and every later `make test`, CI run or checkout reuses them. Prints the folder.
#
#   scripts/kube-build.sh            build if missing, print the folder holding the binaries
#   scripts/kube-build.sh --print    print the folder only (exit 1 if not built)
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
key="$(cat scripts/kube/go.sum scripts/kube/etcd/go.sum scripts/kube/go.mod scripts/kube/etcd/go.mod | sha256sum | cut -c1-12)"
cache="${IMGSEARCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imgsearch}/kube-$KUBE_VERSION-etcd-$ETCD_VERSION-$key"
binaries=(etcd kube-apiserver kube-controller-manager kubectl)

built() {
  for b in "${binaries[@]}"; do [[ -x "$cache/$b" ]] || return 1; done
}

if [[ "${1:-}" == "--print" ]]; then
  built && echo "$cache" && exit 0
  exit 1
fi
if built; then
  echo "$cache"
  exit 0
fi

command -v go >/dev/null || { echo "kube-build: Go is needed to build the test control plane (go 1.26)" >&2; exit 1; }
staging="$cache.partial.$$"
rm -rf "$staging"
mkdir -p "$staging"
trap 'rm -rf "$staging"' EXIT
started=$SECONDS

# The version a client sees (`kubectl version`, the API server's /version), as upstream's
# hack/lib/version.sh stamps it; without it the binaries call themselves v0.0.0-master.
minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"

echo "kube-build: building etcd $ETCD_VERSION, kube-apiserver, kube-controller-manager and kubectl $KUBE_VERSION into $cache (cold: tens of minutes on 2 cores)" >&2
# -mod=readonly: go.sum pins every module; a missing or changed sum is an error, not an update.
(cd scripts/kube/etcd && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$staging/etcd" .)
echo "kube-build: etcd built after $((SECONDS - started)) s" >&2
(cd scripts/kube && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$staging/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
echo "kube-build: control plane built in $((SECONDS - started)) s" >&2

mv "$staging" "$cache"
trap - EXIT
# Builds for other versions or module pins are not used again; each is ~350 MB.
for old in "$(dirname "$cache")"/kube-*; do
  [[ "$old" == "$cache" || "$old" == *.partial.* ]] || rm -rf "$old"
done
echo "$cache"
