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

# The stamp names the version and the exact module graph the binary came from.
want="kube-apiserver ${version} $(cat "${here}/go.mod" "${here}/go.sum" | sha256sum | cut -d' ' -f1)"

up_to_date() {
	[[ -x "${dir}/kube-apiserver" && -f "${dir}/stamp" ]] &&
		[[ "$(cat "${dir}/stamp")" == "${want}" ]]
}

if up_to_date; then
	echo "${dir}"
	exit 0
fi

# Serialize concurrent builds: the second waits, then finds the stamp.
if command -v flock >/dev/null 2>&1; then
	exec 9>"${dir}/.lock"
	flock 9
	if up_to_date; then
		echo "${dir}"
		exit 0
	fi
fi

tmp="$(mktemp -d "${dir}/.build.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT

echo "tools/kube-apiserver/build.sh: building kube-apiserver ${version} into ${dir} (about 6 minutes the first time)" >&2
start=$(date +%s)
(
	cd "${here}"
	# The version variables are what `kube-apiserver --version` and the
	# /version endpoint report (client-go's discovery reads them); Kubernetes'
	# own build sets them the same way. -s -w drop the symbol table and DWARF.
	GOWORK=off go build -trimpath -o "${tmp}/kube-apiserver" \
		-ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${version} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}" \
		k8s.io/kubernetes/cmd/kube-apiserver
)

# Rename within one filesystem is atomic; the stamp goes last.
mv -f "${tmp}/kube-apiserver" "${dir}/kube-apiserver"
printf '%s\n' "${want}" >"${tmp}/stamp"
mv -f "${tmp}/stamp" "${dir}/stamp"
echo "tools/kube-apiserver/build.sh: built in $(($(date +%s) - start))s" >&2
echo "${dir}"
