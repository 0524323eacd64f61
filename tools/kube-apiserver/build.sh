#!/usr/bin/env bash
# Builds kube-apiserver (Kubernetes v1.37.2, pinned by this module's go.mod)
# into a cache outside the repository, so later runs and fresh CI clones on the
# same machine reuse it. The Kubernetes tests (internal/testutil/kube) start it
# with controller-runtime's envtest, on etcd from tools/etcd/build.sh.
#
#   bash tools/kube-apiserver/build.sh          # build if needed, print the binary dir
#
# Cache dir: $GRIDMESH_KUBE_APISERVER_DIR, or
# ${XDG_CACHE_HOME:-$HOME/.cache}/gridmesh/kube-apiserver-<version>.
# internal/testutil/kube looks in the same place.
#
# Kubernetes is Apache-2.0. See go.mod for why this is a wrapper module. About
# 6 minutes and 3 GB of Go build cache the first time on two cores; the
# binary is about 119 MB stripped.
#
# A no-op when the binary exists and the stamp file matches this module's
# go.mod and go.sum. Safe when two runs race: a lock serializes them (where
# flock exists), and the binary is built under a temporary name and renamed
# into place, stamp last, so a reader never sees a half-written binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="v1.37.2"
if ! grep -q "k8s.io/kubernetes ${version}" "${here}/go.mod"; then
	echo "tools/kube-apiserver/build.sh: go.mod does not pin k8s.io/kubernetes ${version}; update the version in this script" >&2
	exit 1
fi
minor="${version#v1.}"
minor="${minor%%.*}"

dir="${GRIDMESH_KUBE_APISERVER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gridmesh/kube-apiserver-${version}}"
mkdir -p "${dir}"

# shellcheck source=tools/cachedbuild.sh
. "${here}/../cachedbuild.sh"

build() {
	local tmp="$1"
	echo "tools/kube-apiserver/build.sh: building kube-apiserver ${version} into ${dir} (about 6 minutes the first time)" >&2
	cd "${here}"
	# The version variables are what `kube-apiserver --version` and the
	# /version endpoint report (client-go's discovery reads them); Kubernetes'
	# own build sets them the same way. -s -w drop the symbol table and DWARF.
	GOWORK=off go build -trimpath -o "${tmp}/kube-apiserver" \
		-ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${version} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}" \
		k8s.io/kubernetes/cmd/kube-apiserver
	cd - >/dev/null
}

cached_build tools/kube-apiserver/build.sh kube-apiserver "${version}" "${dir}" build kube-apiserver
