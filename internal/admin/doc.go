// Package admin is the loopback-only admin endpoint of the mesh: JSON over HTTP for identity, trust bundles, targets and endpoints,
// effective policies, every xDS resource the process's xDS clients hold
// (version, ACKed or NACKed and why), unsupported config fields, recent
// authorization denials and recent events, with grpc-go's channelz and a
// CSDS service (one ClientConfig per xDS client: grpc-go's process-wide one
// and each provider's) over gRPC (h2c) on the same port. `meshctl` reads
// it.
//
// Services turn it on with mesh.NewAdmin and mesh.WithAdmin, which own an
// endpoint each; the mesh uses this package directly.
//
//	s, err := admin.Listen(admin.Config{Addr: "127.0.0.1:15000"})
//	if err != nil {
//		return err
//	}
//	defer s.Close()
//	recorder.OnEvent(s.Record)
//	s.Register(admin.Provider{Component: admin.Component{Kind: "server", Name: id}})
package admin
