package security

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/internal/peerctx"
)

// PeerID returns the verified SPIFFE ID of the caller whose request ctx
// belongs to. The mesh's servers record it from the caller's X.509-SVID,
// before authorization and the handler, and it cannot be set any other
// way: no exported function takes an ID to put there, so a context that
// did not pass the servers' checks has no peer ID, whatever gRPC peer,
// metadata or headers it carries. Headers in which a sidecar would name the
// caller (X-Forwarded-Client-Cert, X-SPIFFE-ID) are deleted before the
// handler runs: read the caller with PeerID. It does not block and is safe
// for concurrent use.
func PeerID(ctx context.Context) (spiffeid.ID, bool) {
	return peerctx.Verified(ctx)
}
