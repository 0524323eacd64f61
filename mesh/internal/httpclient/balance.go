package httpclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// NotSentError is an attempt that failed before its endpoint could have
// seen any of the request: the connection could not be made (refused,
// dial timeout, failed TLS handshake, a server with the wrong SPIFFE ID),
// or HTTP/2 proved the server never processed the stream (REFUSED_STREAM;
// a graceful GOAWAY whose last stream ID is below the stream's). Any
// request, a POST without an idempotency key included, is safe to send
// again after it; resilience does so (it implements
// resilience.NotSentError), on another endpoint. Errors that only may
// mean the request was lost (EOF, a reset after the request was written)
// are never NotSentErrors.
type NotSentError struct {
	Endpoint string // the endpoint's address, host:port
	Err      error
}

func (e *NotSentError) Error() string { return e.Err.Error() }
func (e *NotSentError) Unwrap() error { return e.Err }

// NotSent reports true: the request provably did not reach the server.
func (e *NotSentError) NotSent() bool { return true }

// dialError marks a failure of the endpoint's dialer (TCP connect or TLS
// handshake): no byte of any request was written on the connection.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// NeverSent reports whether err, from an http.Transport of this package,
// proves the request did not reach the server: a dial or TLS handshake
// failure of the endpoint's dialer, or one of net/http's HTTP/2 errors
// for a stream the server refused or never processed. net/http retries
// these itself on a new connection to the same endpoint when it can; the
// ones it returns are what is left.
func NeverSent(err error) bool {
	var de *dialError
	if errors.As(err, &de) {
		return true
	}
	// net/http's HTTP/2 errors are unexported values: know them by their
	// text, at the end of the chain only (not in text a server sent).
	inner := err
	for u := errors.Unwrap(inner); u != nil; u = errors.Unwrap(inner) {
		inner = u
	}
	if inner == nil {
		return false
	}
	msg := inner.Error()
	switch msg {
	case "http2: no cached connection was available", // ErrNoCachedConn
		"http2: client conn not usable",                               // errClientConnUnusable
		"http2: client conn could not be established",                 // errClientConnNotEstablished
		"http2: Transport received Server's graceful shutdown GOAWAY": // errClientConnGotGoAway
		return true
	}
	// The GOAWAY above, for a body net/http could not rewind.
	if strings.HasPrefix(msg, "http2: Transport: cannot retry err [http2: Transport received Server's graceful shutdown GOAWAY]") {
		return true
	}
	// StreamError: "stream error: stream ID 3; REFUSED_STREAM[; cause]".
	if rest, ok := strings.CutPrefix(msg, "stream error: stream ID "); ok {
		parts := strings.Split(rest, "; ")
		return len(parts) >= 2 && parts[1] == "REFUSED_STREAM"
	}
	return false
}

// balancer is the balancing stage: it sends each attempt to an endpoint of
// the request's decided cluster and never resends.
type balancer struct{}

func (balancer) RoundTrip(req *http.Request) (*http.Response, error) {
	d, _ := req.Context().Value(decisionKey{}).(*decision)
	if d == nil {
		closeBody(req)
		return nil, errors.New("httpclient: a request reached the balancer without a routing decision in its context")
	}
	c, err := d.cluster(req.Context())
	if err != nil {
		closeBody(req)
		return nil, err
	}
	pick, err := d.pick(c)
	if err != nil {
		closeBody(req)
		if c.name != "" {
			return nil, fmt.Errorf("mesh: %s (%s cluster %s): %w", d.host, d.svc.target, c.name, err)
		}
		return nil, fmt.Errorf("mesh: %s (%s): %w", d.host, d.svc.target, err)
	}
	// A shallow copy with its own URL, as Request.WithContext makes: the
	// endpoint's transport sees the endpoint's address, the server the
	// service's host.
	out, u := *req, *req.URL
	u.Scheme, u.Host = "https", pick.Addr
	out.URL, out.Host = &u, d.host
	resp, err := c.tr.RoundTrip(&out)
	if err != nil {
		pick.Done()
		err = fmt.Errorf("mesh: %s endpoint %s: %w", d.host, pick.Addr, err)
		if req.Context().Err() == nil && NeverSent(err) {
			pick.Failed()
			return nil, &NotSentError{Endpoint: pick.Addr, Err: err}
		}
		return nil, err
	}
	pick.Succeeded()
	resp.Body = &doneBody{ReadCloser: resp.Body, done: pick.Done}
	return resp, nil
}

// endpointTransport is the connection pool of one cluster: the identity
// stage. Its dialer verifies each endpoint against the SPIFFE ID discovery
// gave for it, else the cluster's IDs from meshd, else Config.Expect.
func (t *Transport) endpointTransport(c *cluster) *http.Transport {
	protocols := t.cfg.Protocols
	alpn := t.cfg.NextProtos
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Protocols:           &protocols,
		ForceAttemptHTTP2:   protocols.HTTP2(),
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			expect := t.cfg.Expect
			if m := c.ids.Load(); m != nil {
				expect = *m
			}
			if id, ok := c.bal.ID(addr); ok && !id.IsZero() {
				expect = spiffeid.MatchID(id)
			}
			cfg := meshtls.ClientTLSConfig(t.cfg.Identity, expect)
			cfg.NextProtos = alpn
			raw, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &dialError{err}
			}
			conn := tls.Client(raw, cfg)
			if err := conn.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, &dialError{fmt.Errorf("mesh: TLS handshake with %s: %w", addr, err)}
			}
			return conn, nil
		},
	}
}

// doneBody calls done when the body is closed or read to its end: it ends
// the request's count on its endpoint, or the route's timeout.
type doneBody struct {
	io.ReadCloser
	done func()
}

func (b *doneBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.done()
	}
	return n, err
}

func (b *doneBody) Close() error {
	b.done()
	return b.ReadCloser.Close()
}
