package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

// HTTPServer is an HTTPS server inside the mesh: it presents the service's
// SVID, accepts only clients with a valid SVID of a trusted trust domain,
// speaks HTTP/1.1 and HTTP/2, authorizes every request on the caller's
// SPIFFE ID, HTTP method, Host and normalized path, and drains gracefully.
// Safe for concurrent use; Serve it once.
type HTTPServer struct {
	srv    *http.Server
	id     spiffeid.ID
	grace  time.Duration
	drain  time.Duration
	logger *slog.Logger
	tel    *meshTelemetry

	registration discoveryServerConfig // WithRegistration (mesh/discovery.go)

	closeOnce sync.Once
}

type connStartKey struct{}

// NewHTTPServer builds a mesh HTTP server for handler. It does not block.
//
// Every request passes, before handler: the mesh's telemetry, installed
// by the same rule as on gRPC (see WithTracerProvider): a server span when
// sampled, W3C trace context and baggage, and http.server.request.duration
// by caller and callee SPIFFE ID, method, route pattern and status;
// the caller's SPIFFE ID from its verified certificate, which handlers read
// with PeerID(r.Context()); path normalization under the server's path
// policy (WithHTTPPathPolicy; default security.PathStrict), with 400 and
// the reason for an ambiguous path, a request target that is not a path
// ("OPTIONS *", which net/http would otherwise answer itself, or CONNECT's
// host:port) and a malformed Host (anything but a DNS name, an IPv4 address or a
// bracketed IPv6 address, with an optional port); and authorization
// (WithAuthorizer, e.g. security.HTTPRules), with 403 and the reason for a
// denial, counted in the mesh metrics and passed to WithDenialHook; then,
// with WithIdempotency, the idempotency middleware for requests with an
// Idempotency-Key header. handler sees the normalized path in r.URL and
// r.RequestURI and the lower-cased r.Host. Default authorization: every
// authenticated caller of a trusted trust domain.
//
// Connections live at most 40% of the SVID's remaining validity when the
// server is built (about 40% of its TTL): after that the next
// response carries "Connection: close" (a GOAWAY on HTTP/2), so clients
// move to fresh certificates; idle connections close after the same time
// (at most 2 minutes); and a connection is cut at the latest
// WithConnectionGrace after the earlier expiry of the certificates it was
// authenticated with.
func NewHTTPServer(handler http.Handler, opts ...ServerOption) (*HTTPServer, error) {
	if handler == nil {
		return nil, errors.New("mesh: NewHTTPServer has no handler: pass an http.Handler such as an *http.ServeMux")
	}
	cfg, id, remaining, logger, err := newServerConfig("NewHTTPServer", opts)
	if err != nil {
		return nil, err
	}
	if err := meshtls.CheckPathPolicy(cfg.http.paths); err != nil {
		return nil, fmt.Errorf("mesh: WithHTTPPathPolicy: %w", err)
	}
	protocols := httpProtocols(cfg.http.protocols)
	tlsCfg := meshtls.ServerTLSConfig(cfg.identity, spiffeid.MatchAny())
	tlsCfg.NextProtos = nextProtos(protocols)

	tel, err := newTelemetry(&cfg.commonConfig, id)
	if err != nil {
		return nil, err
	}
	if cfg.idempotency != nil {
		handler = idempotency.NewServer(cfg.idempotency, callerKey).Handler(handler)
	}
	tel.registerServer(cfg.identity, cfg.authorizer, "http-server")
	maxAge := remaining * 2 / 5
	guarded := meshtls.HTTPHandler(handler, tel.authorizer(cfg.authorizer), tel.onDeny(cfg.onDeny), cfg.http.paths)
	// Telemetry (spans, golden metrics labelled by caller and callee
	// SPIFFE ID, method, route pattern and status) outside the
	// authorization, so refusals count.
	measured := tel.httpHandler(guarded)
	capped := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if start, ok := r.Context().Value(connStartKey{}).(time.Time); ok && time.Since(start) > maxAge {
			w.Header().Set("Connection", "close") // HTTP/2: graceful GOAWAY
		}
		measured.ServeHTTP(w, r)
	})
	s := &HTTPServer{
		id:     id,
		grace:  cfg.grace,
		drain:  cfg.drain,
		logger: logger.With("component", "mesh.httpserver", "spiffe_id", id.String()),
		tel:    tel,

		registration: cfg.discovery,
	}
	var outer http.Handler = capped
	s.srv = &http.Server{
		Handler:           outer,
		TLSConfig:         tlsCfg,
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		// "OPTIONS *" goes through the mesh's checks like any request,
		// which refuse it; net/http would answer it before any handler.
		DisableGeneralOptionsHandler: true,
		IdleTimeout:                  min(maxAge, 2*time.Minute),
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, connStartKey{}, time.Now())
		},
		ErrorLog: slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
	}
	return s, nil
}

func httpProtocols(p *http.Protocols) http.Protocols {
	var out http.Protocols
	if p == nil {
		out.SetHTTP1(true)
		out.SetHTTP2(true)
		return out
	}
	out.SetHTTP1(p.HTTP1())
	out.SetHTTP2(p.HTTP2())
	return out
}

func nextProtos(p http.Protocols) []string {
	var out []string
	if p.HTTP2() {
		out = append(out, "h2")
	}
	if p.HTTP1() {
		out = append(out, "http/1.1")
	}
	return out
}

// ID returns the server's own SPIFFE ID.
func (s *HTTPServer) ID() spiffeid.ID { return s.id }

// Serve accepts connections on lis until ctx ends, then drains. With
// WithRegistration it registers the server in Consul once it listens and
// marks the registration failing as soon as draining starts. Draining stops
// accepting, closes idle connections, lets in-flight requests finish for up
// to the drain timeout (WithDrainTimeout), closes what remains and returns
// nil. It returns early with an error if lis fails. It blocks. Call it once.
func (s *HTTPServer) Serve(ctx context.Context, lis net.Listener) error {
	bound, tlsCfg := meshtls.CertificateBoundListener(lis, s.srv.TLSConfig, s.grace)
	s.srv.TLSConfig = tlsCfg
	s.logger.Info("serving", "address", lis.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- s.srv.ServeTLS(bound, "", "") }()
	registration, err := s.registration.register(ctx, lis, s.id)
	if err != nil {
		s.srv.Close()
		<-errc
		return err
	}
	if registration != nil {
		defer registration.Close()
	}
	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("mesh: serving HTTP on %s: %w", lis.Addr(), err)
		}
		return nil
	case <-ctx.Done():
	}
	s.logger.Info("draining", "timeout", s.drain)
	if registration != nil {
		// Mark the registration failing first, so clients move away.
		drainCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := registration.Drain(drainCtx); err != nil {
			s.logger.Warn("marking the Consul registration failing", "error", err)
		}
		cancel()
	}
	dctx, cancel := context.WithTimeout(context.Background(), s.drain)
	defer cancel()
	if err := s.srv.Shutdown(dctx); err != nil {
		s.logger.Warn("drain timeout: closing remaining connections")
		s.srv.Close()
	}
	<-errc
	return nil
}

// Close stops the server at once, closing the listener and every
// connection, and releases its telemetry. Call it also after Serve
// returned. It is safe to call more than once and together with Serve.
func (s *HTTPServer) Close() error {
	s.closeOnce.Do(func() {
		s.srv.Close()
		s.tel.close()
	})
	return nil
}
