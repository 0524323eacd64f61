// Package registration is the wire format and client of meshd's
// registration API: mesh servers add their endpoints (with their SPIFFE
// IDs) to meshd and remove them on shutdown. The API is HTTP/JSON:
//
//	PUT    /v1/endpoints                        body: Registration
//	DELETE /v1/endpoints?service=S&address=A
//	GET    /v1/endpoints                        → []Registration
//
// A registration with a TTL expires unless renewed; Client.Heartbeat renews.
//
// A PUT body is one JSON object (Content-Type: application/json, UTF-8) of
// at most MaxBodySize bytes, with the fields of Registration spelt exactly,
// each once; values are printable ASCII. meshd refuses anything else with
// 400 (415 for another content type, 413 for a larger body) and an error
// naming the field.
//
// The API is served over mTLS (HTTP/1.1): the caller presents its SVID and
// may register and deregister only endpoints whose spiffe_id is its own
// (meshd's operators may do anything); meshd answers other requests with
// 403 and {"error": "forbidden by rule R: ...", "rule": R}. NewTLSClient
// speaks it; NewClient is for a meshd run with
// -insecure-plaintext-xds-for-local-debugging.
//
//	c := registration.NewTLSClient("127.0.0.1:15010", tlsConfig) // the workload's SVID, meshd's ID
//	defer c.Close()
//	go c.Heartbeat(ctx, registration.Registration{Service: "trading", Address: lis.Addr().String(), SPIFFEID: id, TTL: 10 * time.Second})
package registration

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// MaxBodySize is the largest registration body meshd reads, 64 KiB: a
// registration is a few hundred bytes, and the limit leaves room for long
// DNS names and SPIFFE IDs while bounding what one request makes meshd
// hold. Client.Register refuses a larger registration before sending it.
const MaxBodySize = 64 << 10

// StoreHeader is the header of meshd's registration API answers that says
// where meshd keeps registrations: "memory" (this meshd only: replicas do
// not share them) or "consul" (the Consul catalog, shared by every replica
// over the same Consul).
const StoreHeader = "Meshd-Registration-Store"

// The values of StoreHeader.
const (
	StoreMemory = "memory"
	StoreConsul = "consul"
)

// maxAnswer bounds what Client quotes of meshd's answer in an Error.
const maxAnswer = 1 << 10

// Registration is one endpoint a server adds.
type Registration struct {
	// Service is the service name clients dial as xds:///<service>.
	Service string `json:"service"`
	// Version puts the endpoint in one of the service's versions. Optional.
	Version string `json:"version,omitempty"`
	// Address is where clients connect, host:port.
	Address string `json:"address"`
	// ListenAddress is the address the server listens on, when it differs
	// from Address (0.0.0.0:8443). Default Address.
	ListenAddress string `json:"listen_address,omitempty"`
	// SPIFFEID is the identity the server presents. Optional.
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// Weight is the load-balancing weight, relative to the service's other
	// endpoints (2 gets twice the calls of 1). Default 1 (also for 0). The
	// weights of one service's endpoints may add up to at most 4294967295.
	Weight uint32 `json:"weight,omitempty"`
	// TTL makes the registration expire unless renewed within it. Zero:
	// it stays until deregistered.
	TTL Duration `json:"ttl,omitempty"`
}

// Duration is a time.Duration that reads and writes as "10s" in JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string like "10s". Its errors do not
// quote the value, which may be long.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("ttl must be a duration string like \"10s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("ttl is not a duration like \"10s\" (%d bytes)", len(s))
	}
	*d = Duration(v)
	return nil
}

// Client calls a meshd registration API. Safe for concurrent use.
type Client struct {
	bases []string
	hc    *http.Client
	next  atomic.Int32 // index in bases of the replica that answered last
	onAns atomic.Pointer[func(addr, store string)]
	tr    *http.Transport // NewTLSClient's, closed by Close
}

// NewClient returns a client for the registration API at addr (host:port
// or a URL) and, optionally, at more replicas of meshd, in plaintext, which
// meshd accepts only when it was started with
// -insecure-plaintext-xds-for-local-debugging. It uses http.DefaultClient.
// Use NewTLSClient otherwise.
//
// With several replicas, a request goes to the replica that answered
// last (the first at the start); when a replica cannot be reached or
// answers 502, 503 or 504, the request goes to the next, in order, until
// one answers. Any other answer, a refusal included, is final.
func NewClient(addr string, more ...string) *Client {
	c := &Client{hc: http.DefaultClient}
	for _, a := range append([]string{addr}, more...) {
		base := a
		if !strings.Contains(base, "://") {
			base = "http://" + base
		}
		c.bases = append(c.bases, strings.TrimSuffix(base, "/"))
	}
	return c
}

// OnAnswer sets f to be called, after every answer, with the replica that
// answered and where it says it keeps registrations (StoreHeader: StoreMemory,
// StoreConsul, or "" from an older meshd). f must not block. Set it before
// the client is used; nil removes it.
func (c *Client) OnAnswer(f func(addr, store string)) {
	if f == nil {
		c.onAns.Store(nil)
		return
	}
	c.onAns.Store(&f)
}

// NewTLSClient returns a client for the registration API at addr
// (host:port) and, optionally, more replicas of meshd (failing over as
// NewClient's does), over TLS with cfg, which must present the workload's
// SVID and accept only meshd's (the mesh builds it from its identity and
// mesh.WithControlPlaneID). cfg's certificate callbacks are called on
// every new connection, so a rotated SVID applies to the next one; idle
// connections are closed after 30s. Close releases them.
func NewTLSClient(cfg *tls.Config, addr string, more ...string) *Client {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"http/1.1"} // meshd sends h2 to its gRPC server
	tr := &http.Transport{
		TLSClientConfig:     cfg,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     30 * time.Second,
		MaxIdleConnsPerHost: 2,
	}
	c := &Client{hc: &http.Client{Transport: tr}, tr: tr}
	for _, a := range append([]string{addr}, more...) {
		c.bases = append(c.bases, "https://"+strings.TrimSuffix(strings.TrimPrefix(a, "https://"), "/"))
	}
	return c
}

// Close closes the idle connections of a client from NewTLSClient. Safe
// to call twice and on a NewClient client (it does nothing there).
func (c *Client) Close() error {
	if c.tr != nil {
		c.tr.CloseIdleConnections()
	}
	return nil
}

// Register adds or renews r. It blocks until meshd answers or ctx ends. A
// registration whose JSON is over MaxBodySize is refused without sending.
func (c *Client) Register(ctx context.Context, r Registration) error {
	body, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("registration: %w", err)
	}
	if len(body) > MaxBodySize {
		return fmt.Errorf("registration: the registration is %d bytes of JSON, over meshd's limit of %d (64 KiB, MaxBodySize)", len(body), MaxBodySize)
	}
	return c.do(ctx, http.MethodPut, "/v1/endpoints", body, nil)
}

// Deregister removes the endpoint at address from service.
func (c *Client) Deregister(ctx context.Context, service, address string) error {
	q := url.Values{"service": {service}, "address": {address}}
	return c.do(ctx, http.MethodDelete, "/v1/endpoints?"+q.Encode(), nil, nil)
}

// List returns every registered endpoint.
func (c *Client) List(ctx context.Context) ([]Registration, error) {
	var out []Registration
	err := c.do(ctx, http.MethodGet, "/v1/endpoints", nil, &out)
	return out, err
}

// Heartbeat registers r and renews it every TTL/3 (every 5s when TTL is
// zero, which re-adds it after a meshd restart, within meshd serve's
// default -startup-grace of 10s) until ctx ends, then
// deregisters it with a 2-second deadline. Failed renewals are passed to
// onError (may be nil) and retried at the next tick. It blocks until ctx
// ends and returns the deregistration error.
func (c *Client) Heartbeat(ctx context.Context, r Registration, onError func(error)) error {
	every := time.Duration(r.TTL) / 3
	if every <= 0 {
		every = 5 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := c.Register(ctx, r); err != nil && ctx.Err() == nil && onError != nil {
			onError(err)
		}
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			return c.Deregister(dctx, r.Service, r.Address)
		case <-t.C:
		}
	}
}

// Error is a refusal from meshd.
type Error struct {
	Status int
	// Message is meshd's error, cut to 1 KiB.
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("registration: meshd refused (%d): %s", e.Status, e.Message)
}

func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	start := int(c.next.Load())
	var errs []error
	for i := range c.bases {
		idx := (start + i) % len(c.bases)
		final, err := c.doOne(ctx, c.bases[idx], method, path, body, out)
		if final {
			c.next.Store(int32(idx))
			return err
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return fmt.Errorf("registration: no meshd replica answered: %w", errors.Join(errs...))
}

// doOne sends one request to the replica at base. final is false when
// another replica should be tried: this one could not be reached or is
// unavailable (502, 503, 504).
func (c *Client) doOne(ctx context.Context, base, method, path string, body []byte, out any) (final bool, err error) {
	req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(body))
	if err != nil {
		return true, fmt.Errorf("registration: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return false, fmt.Errorf("registration: %w", err)
	}
	defer resp.Body.Close()
	if f := c.onAns.Load(); f != nil {
		(*f)(strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://"), resp.Header.Get(StoreHeader))
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return false, fmt.Errorf("registration: read answer from %s: %w", base, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		if len(e.Error) > maxAnswer {
			e.Error = strings.ToValidUTF8(e.Error[:maxAnswer], "") + fmt.Sprintf("… (%d bytes, cut)", len(e.Error))
		}
		switch resp.StatusCode {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return false, &Error{Status: resp.StatusCode, Message: e.Error}
		}
		return true, &Error{Status: resp.StatusCode, Message: e.Error}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return true, fmt.Errorf("registration: decode answer: %w", err)
		}
	}
	return true, nil
}

// ErrNotFound is returned (wrapped in *Error with status 404) by Deregister
// when nothing is registered at the address; callers may ignore it.
var ErrNotFound = errors.New("registration: not registered")

// Is lets errors.Is(err, ErrNotFound) see a 404.
func (e *Error) Is(target error) bool {
	return target == ErrNotFound && e.Status == http.StatusNotFound
}
