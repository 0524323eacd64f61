// Package spire runs a real SPIRE server and agent (v1.13.3) on loopback for
// tests: SQLite datastore, join-token node attestation and the unix workload
// attestor, each process in its own short temporary directory, all of it
// stopped in t.Cleanup.
//
// The binaries are not built here: tools/spire/build.sh builds them once into
// a cache outside the repository (about 15 minutes the first time) and later
// runs reuse them. A test that calls [Start] without them fails with a message
// naming that script; GRIDMESH_SKIP_SPIRE=1 turns the failure into a skip.
//
//	d := spire.Start(t, spire.Config{DefaultX509SVIDTTL: time.Minute})
//	d.RegisterWorkload(t, "spiffe://gridmesh.test/trading",
//		[]string{spire.UIDSelector(os.Getuid())}, 20*time.Second)
//	src, err := workloadapi.NewX509Source(ctx,
//		workloadapi.WithClientOptions(workloadapi.WithAddr(d.Agent().Addr())))
//
// Outages and rotations: [Deployment.StopServer] and [Deployment.StartServer]
// (same port, datastore and CA keys), [Agent.Stop], [Agent.Start] and
// [Agent.Restart] (the agent keeps its SVID and key on disk), and a CA rotation
// forced through spire-server with [Deployment.PrepareX509Authority],
// [Deployment.ActivateX509Authority], [Deployment.TaintX509Authority] and
// [Deployment.RevokeX509Authority]; a short [Config.CATTL] makes SPIRE rotate
// its CA on its own. SPIRE backdates SVIDs by 10s and agents renew them at
// half of that whole lifetime, so an entry with a 20s TTL is renewed about
// every 5s.
//
// Every workload in one test process has the same unix selectors, so one agent
// hands it every entry registered for them. To give a client and a server in
// the same process distinct identities, start a second agent with
// [Deployment.AddAgent] and register each identity under its own agent.
package spire
