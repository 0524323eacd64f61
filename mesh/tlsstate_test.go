package mesh_test

import (
	"crypto/tls"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

func tlsState(p *peer.Peer) (tls.ConnectionState, bool) {
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	return info.State, ok
}
