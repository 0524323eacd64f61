# Sourced by tools/*/build.sh: builds a wrapper module's binaries once into a
# cache directory outside the repository and reuses them after.
#
#   cached_build SCRIPT NAME VERSION DIR BUILD BIN...
#
# SCRIPT names the caller in messages; NAME and VERSION, with a hash of the
# caller's go.mod and go.sum (in $here), make the stamp the cached binaries
# must match. When DIR holds every BIN and that stamp, cached_build prints
# DIR and returns. Otherwise it takes DIR/.lock (where flock exists: the
# second of two racing runs waits, then finds the stamp), calls the shell
# function BUILD with a temporary directory in DIR that it must leave each
# BIN in, renames them into place (atomic within one filesystem) and writes
# the stamp last, so a reader never sees a half-written binary. Prints DIR.

cached_build() {
	local script="$1" name="$2" version="$3" dir="$4" build="$5"
	shift 5
	local bins=("$@")
	mkdir -p "${dir}"
	local want
	want="${name} ${version} $(cat "${here}/go.mod" "${here}/go.sum" | sha256sum | cut -d' ' -f1)"
	if _cached_build_up_to_date "${dir}" "${want}" "${bins[@]}"; then
		echo "${dir}"
		return 0
	fi
	if command -v flock >/dev/null 2>&1; then
		exec 9>"${dir}/.lock"
		flock 9
		if _cached_build_up_to_date "${dir}" "${want}" "${bins[@]}"; then
			echo "${dir}"
			return 0
		fi
	fi
	local tmp start bin
	tmp="$(mktemp -d "${dir}/.build.XXXXXX")"
	# shellcheck disable=SC2064 # tmp is fixed now
	trap "rm -rf '${tmp}'" EXIT
	start=$(date +%s)
	"${build}" "${tmp}"
	for bin in "${bins[@]}"; do
		mv -f "${tmp}/${bin}" "${dir}/${bin}"
	done
	printf '%s\n' "${want}" >"${tmp}/stamp"
	mv -f "${tmp}/stamp" "${dir}/stamp"
	echo "${script}: built in $(($(date +%s) - start))s" >&2
	echo "${dir}"
}

_cached_build_up_to_date() {
	local dir="$1" want="$2" bin
	shift 2
	[[ -f "${dir}/stamp" && "$(cat "${dir}/stamp")" == "${want}" ]] || return 1
	for bin in "$@"; do
		[[ -x "${dir}/${bin}" ]] || return 1
	done
}
