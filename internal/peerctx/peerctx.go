// Package peerctx carries the verified caller of a request in its context.
// security.PeerID reads it; only the mesh's server checks
// (internal/meshtls: the gRPC interceptors and the HTTP handler) write it,
// from the certificate of the connection's completed handshake. The package
// is internal so that no code outside this module can make PeerID report a
// caller that did not present a certificate for it.
package peerctx

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// key is the context key of the verified caller.
type key struct{}

// verifiedCtx carries the verified caller: one allocation per call for
// both the context and the value.
type verifiedCtx struct {
	context.Context
	id spiffeid.ID
}

func (c *verifiedCtx) Value(k any) any {
	if k == (key{}) {
		return c
	}
	return c.Context.Value(k)
}

// WithVerified returns ctx carrying id as the verified caller. id must come
// from the peer certificate of the request's own connection, verified by
// the TLS handshake.
func WithVerified(ctx context.Context, id spiffeid.ID) context.Context {
	return &verifiedCtx{Context: ctx, id: id}
}

// Verified returns the caller recorded by WithVerified. It does not block
// and is safe for concurrent use.
func Verified(ctx context.Context) (spiffeid.ID, bool) {
	if c, ok := ctx.Value(key{}).(*verifiedCtx); ok {
		return c.id, true
	}
	return spiffeid.ID{}, false
}
