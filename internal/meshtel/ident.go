package meshtel

import (
	"crypto/tls"
	"net/url"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// idCache remembers the SPIFFE ID of each verified peer it was asked
// about, keyed by the pointer the connection keeps (its TLSInfo's URL, its
// leaf certificate), so reading a caller's ID off a connection on every
// call allocates nothing and hashes one pointer. Bounded: when it holds
// maxIDs entries it starts over.
type idCache struct {
	m  atomic.Pointer[map[any]string]
	mu sync.Mutex
}

const maxIDs = 4096

func (c *idCache) get(key any, build func() string) string {
	if m := c.m.Load(); m != nil {
		if s, ok := (*m)[key]; ok {
			return s
		}
	}
	id := build()
	c.mu.Lock()
	defer c.mu.Unlock()
	var cur map[any]string
	if m := c.m.Load(); m != nil && len(*m) < maxIDs {
		cur = *m
	}
	next := make(map[any]string, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	next[key] = id
	c.m.Store(&next)
	return id
}

func (c *idCache) fromURL(u *url.URL) string {
	if u == nil || u.Scheme != "spiffe" {
		return ""
	}
	return c.get(u, func() string { return "spiffe://" + u.Host + u.Path })
}

// PeerID returns the SPIFFE ID of the verified certificate of p's
// connection, or "".
func (h *Hub) PeerID(p *peer.Peer) string {
	if p == nil {
		return ""
	}
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
		return h.ids.fromURL(info.SPIFFEID)
	}
	return ""
}

// TLSPeerID returns the SPIFFE ID in the peer's leaf certificate, or "".
func (h *Hub) TLSPeerID(st *tls.ConnectionState) string {
	if st == nil || len(st.PeerCertificates) == 0 {
		return ""
	}
	leaf := st.PeerCertificates[0]
	return h.ids.get(leaf, func() string {
		for _, u := range leaf.URIs {
			if u.Scheme == "spiffe" {
				return "spiffe://" + u.Host + u.Path
			}
		}
		return ""
	})
}

// codeNames are the gRPC status codes as the semantic conventions spell
// rpc.response.status_code.
var codeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

// CodeName returns c as rpc.response.status_code spells it.
func CodeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "UNKNOWN"
}

// httpMethods are the methods http.request.method keeps; others are
// "_OTHER", as the semantic conventions say, so a label stays bounded.
func httpMethod(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH":
		return m
	}
	return "_OTHER"
}
