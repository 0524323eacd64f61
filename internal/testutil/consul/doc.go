// Package consul runs a real Consul agent (v1.14.11, `consul agent -dev`) on
// loopback for tests: one process per [Start], on free ports, with its own
// temporary data directory, stopped in t.Cleanup (SIGINT, on which a -dev
// agent, a server, shuts down at once without leaving; SIGKILL if it has not
// ended 10s later). Its log goes to a file that is copied into the test log
// when the test fails.
//
// The binary is not built here: tools/consul/build.sh builds it once into a
// cache outside the repository (about 7 minutes the first time) and later
// runs reuse it. A test that calls [Start] without it fails with a message
// naming that script. GRIDMESH_CONSUL_BIN names a binary to use instead.
//
//	a := consul.Start(t)
//	reg, err := discovery.New(discovery.Config{Consul: a.Client()})
//
// Outages: [Agent.Stop] kills the agent (an agent crash: nothing reaches
// Consul, open connections are reset), [Agent.Pause] and [Agent.Resume] send
// SIGSTOP and SIGCONT (a partition: connections stay open and requests hang),
// [Agent.Restart] starts it again on the same ports and data directory, and
// [Agent.RestartEmpty] on the same ports with an empty data directory. A -dev
// agent keeps its Raft state (the catalog, KV, intentions and config entries,
// ACL tokens, the Connect CA) in memory, so after either restart the catalog
// starts over and its indexes go backwards; after Restart the agent
// re-registers the services and checks registered through its agent API
// (/v1/agent/service/register), which it keeps in its data directory: a TTL
// check comes back with the status of its last TTL update if its TTL has not
// run out since, critical otherwise. After RestartEmpty nothing survives.
//
// ACLs: [WithACLs] starts the agent with ACLs enabled, default policy deny and
// a management token ([Agent.ManagementToken]) that [Agent.Client] uses;
// [Agent.CreateToken] makes a token from a policy, [Agent.ClientWithToken] a
// client that presents it.
//
// Connect and config: [Agent.WriteConfigEntry] writes a config entry (such as
// service-intentions or service-defaults) and [Agent.RotateCA] forces a
// Connect CA rotation through /v1/connect/ca/configuration. A second
// datacenter is a second agent started [WithDatacenter] and joined with
// [Agent.JoinWAN].
//
// Agents in one test binary, and in test binaries running at the same time,
// do not share anything: each has its own ports, data directory, node and
// cluster. Choosing a free port and the agent binding it races with other
// processes; Start retries with new ports when the agent fails to bind.
package consul
