#!/usr/bin/env bash
# Builds spire-server and spire-agent (the versions pinned by this module's
# go.mod tool directives) into a cache outside the repository, so later runs and
# fresh CI clones on the same machine reuse them.
#
#   bash tools/spire/build.sh          # build if needed, print the binary dir
#
# Cache dir: $GRIDMESH_SPIRE_DIR, or ${XDG_CACHE_HOME:-$HOME/.cache}/gridmesh/spire-<version>.
# internal/testutil/spire looks in the same place.
#
# A no-op when the binaries exist and the stamp file matches this module's
# go.mod and go.sum. Safe when two runs race: a lock serializes them (where
# flock exists), and the binaries are built under temporary names and renamed
# into place, stamp last, so a reader never sees a half-written binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="v1.13.3"
if ! grep -q "github.com/spiffe/spire ${version}" "${here}/go.mod"; then
	echo "tools/spire/build.sh: go.mod does not pin github.com/spiffe/spire ${version}; update the version in this script" >&2
	exit 1
fi

dir="${GRIDMESH_SPIRE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gridmesh/spire-${version}}"
mkdir -p "${dir}"

# The stamp names the version and the exact module graph the binaries came from.
want="spire ${version} $(cat "${here}/go.mod" "${here}/go.sum" | sha256sum | cut -d' ' -f1)"

up_to_date() {
	[[ -x "${dir}/spire-server" && -x "${dir}/spire-agent" && -f "${dir}/stamp" ]] &&
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

if ! command -v "$(go env CC)" >/dev/null 2>&1; then
	echo "tools/spire/build.sh: no C compiler ($(go env CC)): SPIRE's SQLite datastore needs cgo; apt-get install -y gcc" >&2
	exit 1
fi

tmp="$(mktemp -d "${dir}/.build.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT

echo "tools/spire/build.sh: building spire-server and spire-agent ${version} into ${dir} (8 to 15 minutes the first time)" >&2
start=$(date +%s)
(
	cd "${here}"
	# One go build for both: they share most packages. cgo stays on: the
	# SQLite datastore needs it.
	go build -trimpath -o "${tmp}/" \
		github.com/spiffe/spire/cmd/spire-server \
		github.com/spiffe/spire/cmd/spire-agent
)

# Rename within one filesystem is atomic; the stamp goes last.
mv -f "${tmp}/spire-server" "${dir}/spire-server"
mv -f "${tmp}/spire-agent" "${dir}/spire-agent"
printf '%s\n' "${want}" >"${tmp}/stamp"
mv -f "${tmp}/stamp" "${dir}/stamp"
echo "tools/spire/build.sh: built in $(($(date +%s) - start))s" >&2
echo "${dir}"
