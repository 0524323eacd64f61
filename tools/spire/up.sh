#!/usr/bin/env bash
# Starts a SPIRE server and agent on loopback for running gridmesh services
# (the demo) on real SPIRE identities instead of `meshd dev`, and registers
# workload entries for the current user.
#
#   bash tools/spire/up.sh [-d DIR] [-p PORT] [-t TRUST_DOMAIN] [-l TTL_SECONDS] \
#       /greeter=bin/greeter /caller=bin/caller /tool ...
#   export SPIFFE_ENDPOINT_SOCKET=unix://DIR/agent.sock   # printed, also in DIR/env
#   ...run the services...
#   bash tools/spire/down.sh [-d DIR]
#
# Defaults: DIR /tmp/gridmesh-spire, PORT 18081, TRUST_DOMAIN gridmesh.local,
# TTL 3600. "/greeter=bin/greeter" registers spiffe://TD/greeter for processes
# of your uid running that binary (selectors unix:uid and unix:path), the way
# SPIRE tells services on one node apart; a bare "/tool" registers it for every
# process of your uid, which is then offered all such IDs (a service picks its
# own with security.WorkloadAPIConfig.ExpectedID). Binaries come from
# tools/spire/build.sh (built first if missing). Logs: DIR/server.log,
# DIR/agent.log. Starting over: down.sh, then up.sh again (DIR is wiped).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir=/tmp/gridmesh-spire
port=18081
td=gridmesh.local
ttl=3600
while getopts "d:p:t:l:" opt; do
	case "${opt}" in
	d) dir="${OPTARG}" ;;
	p) port="${OPTARG}" ;;
	t) td="${OPTARG}" ;;
	l) ttl="${OPTARG}" ;;
	*) sed -n '2,19p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
if [[ $# -eq 0 ]]; then
	echo "up.sh: name at least one SPIFFE path to register, e.g. /trading" >&2
	exit 2
fi

bin="$(bash "${here}/build.sh")"
server="${bin}/spire-server"
agent="${bin}/spire-agent"

if [[ -f "${dir}/server.pid" ]] && kill -0 "$(cat "${dir}/server.pid")" 2>/dev/null; then
	echo "up.sh: a SPIRE server from ${dir} is already running; run tools/spire/down.sh -d ${dir} first" >&2
	exit 1
fi
rm -rf "${dir}"
mkdir -p "${dir}/server" "${dir}/agent"
chmod 755 "${dir}"
ssock="${dir}/server.sock"
asock="${dir}/agent.sock"
if [[ ${#asock} -ge 100 ]]; then
	echo "up.sh: ${asock} is too long for a unix socket; pick a shorter -d" >&2
	exit 1
fi

cat >"${dir}/server.conf" <<EOF
server {
    bind_address = "127.0.0.1"
    bind_port = "${port}"
    socket_path = "${ssock}"
    trust_domain = "${td}"
    data_dir = "${dir}/server"
    log_level = "INFO"
    ca_key_type = "ec-p256"
    default_x509_svid_ttl = "1h"
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "${dir}/server/datastore.sqlite3"
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "disk" {
        plugin_data {
            keys_path = "${dir}/server/keys.json"
        }
    }
}
EOF

wait_healthy() { # name, command...
	local name="$1"
	shift
	for _ in $(seq 1 300); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.2
	done
	echo "up.sh: ${name} not healthy after 60s; see ${dir}/${name}.log" >&2
	exit 1
}

nohup "${server}" run -config "${dir}/server.conf" >"${dir}/server.log" 2>&1 &
echo $! >"${dir}/server.pid"
wait_healthy server "${server}" healthcheck -socketPath "${ssock}"

"${server}" bundle show -socketPath "${ssock}" >"${dir}/bootstrap.pem"
token="$("${server}" token generate -socketPath "${ssock}" -spiffeID "spiffe://${td}/agent/local" -ttl 600 | sed -n 's/^Token: //p')"

cat >"${dir}/agent.conf" <<EOF
agent {
    data_dir = "${dir}/agent"
    log_level = "INFO"
    server_address = "127.0.0.1"
    server_port = "${port}"
    socket_path = "${asock}"
    trust_bundle_path = "${dir}/bootstrap.pem"
    trust_domain = "${td}"
}
plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "disk" {
        plugin_data {
            directory = "${dir}/agent"
        }
    }
    # unix:path selectors tell binaries apart; no sha256 hashing of them.
    WorkloadAttestor "unix" {
        plugin_data {
            discover_workload_path = true
            workload_size_limit = -1
        }
    }
}
EOF

nohup "${agent}" run -config "${dir}/agent.conf" -joinToken "${token}" >"${dir}/agent.log" 2>&1 &
echo $! >"${dir}/agent.pid"
wait_healthy agent "${agent}" healthcheck -socketPath "${asock}"

for arg in "$@"; do
	path="${arg%%=*}"
	selectors=(-selector "unix:uid:$(id -u)")
	what="processes of uid $(id -u)"
	if [[ "${arg}" == *=* ]]; then
		exe="$(readlink -f "${arg#*=}")"
		selectors+=(-selector "unix:path:${exe}")
		what="${exe} run by uid $(id -u)"
	fi
	"${server}" entry create -socketPath "${ssock}" -parentID "spiffe://${td}/agent/local" \
		-spiffeID "spiffe://${td}${path}" "${selectors[@]}" -x509SVIDTTL "${ttl}" >/dev/null
	echo "up.sh: registered spiffe://${td}${path} for ${what}" >&2
done

echo "SPIFFE_ENDPOINT_SOCKET=unix://${asock}" >"${dir}/env"
echo "up.sh: SPIRE is up; entries reach the agent within about 5s" >&2
echo "export SPIFFE_ENDPOINT_SOCKET=unix://${asock}"
