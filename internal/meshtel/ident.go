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

// idCache interns SPIFFE IDs by trust domain and path, so reading a
// caller's ID off a connection on every call allocates nothing once seen.
// Bounded: past maxIDs entries, new IDs are built but not kept.
type idCache struct {
	m  atomic.Pointer[map[[2]string]string]
	mu sync.Mutex
}

const maxIDs = 4096

func (c *idCache) get(host, path string) string {
	if m := c.m.Load(); m != nil {
		if s, ok := (*m)[[2]string{host, path}]; ok {
			return s
		}
	}
	id := "spiffe://" + host + path
	c.mu.Lock()
	defer c.mu.Unlock()
	var cur map[[2]string]string
	if m := c.m.Load(); m != nil {
		cur = *m
	}
	if len(cur) >= maxIDs {
		return id
	}
	next := make(map[[2]string]string, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	next[[2]string{host, path}] = id
	c.m.Store(&next)
	return id
}

func (c *idCache) fromURL(u *url.URL) string {
	if u == nil || u.Scheme != "spiffe" {
		return ""
	}
	return c.get(u.Host, u.Path)
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
	for _, u := range st.PeerCertificates[0].URIs {
		if u.Scheme == "spiffe" {
			return h.ids.fromURL(u)
		}
	}
	return ""
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
