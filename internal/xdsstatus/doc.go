// Package xdsstatus records what an xDS client received from its control
// plane and how it answered (ACK or NACK), by watching the client's ADS
// stream, and reports it in the shape of CSDS (envoy.service.status.v3).
//
// grpc-go serves CSDS only for its process-wide xDS client, configured
// through GRPC_XDS_BOOTSTRAP. The mesh gives every channel and server its
// own xDS client instead (internal/xdsbootstrap), which grpc-go's CSDS does
// not see. A Recorder watches one of those clients: the bootstrap names it
// in its channel credentials (ChannelCreds), and grpc-go adds the dial
// options of the credentials bundle, the Recorder's stream interceptor
// among them, to the connection its xDS client opens to the control plane.
//
//	rec := xdsstatus.New(func(u xdsstatus.Update) { ... })
//	defer rec.Close()
//	typ, cfg := rec.ChannelCreds() // into the bootstrap's xds_servers[].channel_creds
//	...
//	dump := rec.ClientConfig() // CSDS ClientConfig: every resource, version, ACK/NACK
package xdsstatus
