package mesh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	v3statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	estats "google.golang.org/grpc/experimental/stats"

	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/internal/meshtel"
	"github.com/gridmesh/gridmesh/internal/xdsstatus"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/security"
)

// telemetryConfig is the telemetry part of commonConfig.
type telemetryConfig struct {
	tracer   trace.TracerProvider
	meter    metric.MeterProvider
	meterSet bool // WithMeterProvider was given
	off      bool
	admin    *Admin // WithAdmin
	adminSet bool
}

// WithTracerProvider sets where the mesh's spans go. Default: the global
// TracerProvider (otel.GetTracerProvider), a no-op until telemetry.Setup
// or otel.SetTracerProvider installs one.
//
// With the provider telemetry.Setup builds, the mesh takes the sampling
// decision of its sampler (Config.Sampler, OTEL_TRACES_SAMPLER; by default
// parent-based) itself, before it starts a span: a call it does not sample
// gets no span (nothing is allocated for one) and passes its caller's
// context on unchanged. With a provider Setup did not build the mesh
// samples parent-based, and that provider's sampler decides new traces.
//
// Off means off: NewServer, NewHTTPServer, Dial and HTTPClient install
// their telemetry (the same for gRPC and HTTP) only if, when they run, a
// provider is an SDK one or WithAdmin is given; set up telemetry before
// building servers and clients. Installed, it passes W3C trace context and
// baggage on for every call, sampled or not; with telemetry off (no-op
// providers and no admin endpoint, or WithoutTelemetry) nothing is
// installed, so a call costs nothing more and its W3C context does not
// pass through the process.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return bothOption(func(c *commonConfig) { c.telemetry.tracer = tp })
}

// WithMeterProvider sets where the mesh's metrics go. Default: the global
// MeterProvider, a no-op until one is installed.
//
// The golden call metrics (rpc.server.call.duration,
// rpc.client.call.duration, http.server.request.duration,
// http.client.request.duration, and attempts apart from calls) are
// counted in the mesh's own lock-free aggregates, which the readers of the
// provider telemetry.Setup builds collect at collection time; pass that
// provider (Providers.MeterProvider). Another SDK provider here is refused
// with an error by the constructor, as its readers cannot see them; as the
// global provider it gets only the mesh's event metrics (retries, breaker
// changes, denials, ...).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return bothOption(func(c *commonConfig) { c.telemetry.meter, c.telemetry.meterSet = mp, true })
}

// WithoutTelemetry installs no telemetry: no spans, no metrics, no trace
// context propagation, no events for the admin endpoint. Telemetry left
// on with no-op providers installs nothing either (see bench/telemetry).
func WithoutTelemetry() Option {
	return bothOption(func(c *commonConfig) { c.telemetry.off = true })
}

// meshTelemetry is what one server or client connection has of telemetry.
// It owns what it starts (admin registrations, the rotation watch, metric
// callbacks) and releases it in close.
type meshTelemetry struct {
	cfg  telemetryConfig
	pipe *meshtel.Pipeline // nil when telemetry is off
	rec  *meshtel.Recorder // pipe.Recorder
	self spiffeid.ID
	// admin is nil unless WithAdmin.
	admin *admin.Server

	// Hooks for the admin endpoint, set once while the owner is being
	// built, before it is shared: the balancer policy, breaker state and
	// endpoints of a client's target.
	balancer  func() string
	breaker   func() string
	endpoints func() []admin.Endpoint
	policies  func() []admin.Policy
	// healthAuthorized is WithHealthAuthorization, shown by registerServer.
	healthAuthorized bool
	// xds records the xDS client of a client or server in xDS mode.
	xds    *xdsstatus.Recorder
	logger *slog.Logger

	xdsMu           sync.Mutex
	unsupportedSeen map[string]bool   // xDS fields already reported, by type, resource and field
	lastNACK        map[string]string // last refusal logged, by type: version and reason

	mu       sync.Mutex
	closers  []func()
	released bool
}

func newTelemetry(c *commonConfig, self spiffeid.ID) (*meshTelemetry, error) {
	t := &meshTelemetry{cfg: c.telemetry, self: self, logger: c.logger}
	if t.cfg.off {
		return t, nil
	}
	if t.cfg.adminSet && t.cfg.admin == nil {
		return nil, errors.New("mesh: WithAdmin(nil): pass the *Admin of mesh.NewAdmin, or leave WithAdmin out")
	}
	tp := meshtel.TracerProvider(t.cfg.tracer)
	mp := meshtel.MeterProvider(t.cfg.meter)
	var hub *meshtel.Hub
	if mp != nil {
		if owner, ok := mp.(meshtel.HubOwner); ok {
			hub = owner.MeshHub()
		} else if t.cfg.meterSet {
			return nil, errors.New("mesh: WithMeterProvider: this provider's readers cannot collect the mesh's call metrics; pass the MeterProvider of telemetry.Setup (Config.NoGlobal keeps it out of the OpenTelemetry globals), or leave WithMeterProvider out")
		}
	}
	if tp == nil && mp == nil && t.cfg.admin == nil {
		return t, nil // nothing would see what telemetry records: off
	}
	t.rec = meshtel.NewRecorder(t.cfg.meter)
	t.pipe = &meshtel.Pipeline{Hub: hub, Tracing: meshtel.NewTracing(tp), Recorder: t.rec, Self: self.String()}
	if a := t.cfg.admin; a != nil {
		t.admin = a.srv
		t.closers = append(t.closers, t.rec.OnEvent(a.srv.Record))
	}
	if mp != nil {
		t.closers = append(t.closers, t.rec.ObserveSVID(svidObserver(c.identity)))
	}
	// SVID rotations are counted once per source by the owner of the
	// metrics they go to (the Hub, owned by telemetry.Setup's Providers),
	// else by the admin endpoint that shows them.
	switch {
	case hub != nil:
		t.closers = append(t.closers, hub.Rotations.Watch(c.identity, t.rec))
	case t.cfg.admin != nil:
		t.closers = append(t.closers, t.cfg.admin.rotations.Watch(c.identity, t.rec))
	}
	return t, nil
}

// addCloser has f run when the connection or server is released.
func (t *meshTelemetry) addCloser(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closers = append(t.closers, f)
}

// log is the mesh logger (WithLogger), silent when none was given.
func (t *meshTelemetry) log() *slog.Logger {
	if t == nil || t.logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.logger
}

// close releases the admin endpoint and metric callbacks. Safe to call
// more than once and on a nil *meshTelemetry.
func (t *meshTelemetry) close() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.released {
		return
	}
	t.released = true
	for i := len(t.closers) - 1; i >= 0; i-- {
		t.closers[i]()
	}
}

// on reports whether the telemetry pipeline is installed: the one rule
// for gRPC and HTTP, servers and clients. It is when a tracer or meter
// provider is an SDK one or an admin endpoint is given, and not with
// WithoutTelemetry: off means nothing installed, nothing allocated.
func (t *meshTelemetry) on() bool { return t != nil && t.pipe != nil }

// recording reports whether events (retries, denials, updates...) are
// recorded: metrics on or an admin endpoint.
func (t *meshTelemetry) recording() bool { return t != nil && t.rec != nil }

// onDeny counts denials and records them for the admin endpoint, then calls
// next (the WithDenialHook function, may be nil).
func (t *meshTelemetry) onDeny(next func(*security.DeniedError)) func(*security.DeniedError) {
	if !t.recording() {
		return next
	}
	m := t.rec
	return func(d *security.DeniedError) {
		target := d.Target
		if t.on() && strings.HasPrefix(target, "/") && t.pipe.ServerMethod(target) == meshtel.OtherMethod {
			target = meshtel.OtherMethod // a method the server does not have: bounded label
		}
		m.AuthzDenied(d.Rule, d.Caller.String(), target)
		if next != nil {
			next(d)
		}
	}
}

// authorizer puts the authorization decision on the call's span when the
// call is traced: mesh.authz.decision, and for a denial the deciding rule
// (mesh.authz.rule). nil stays nil (the default authorization).
func (t *meshTelemetry) authorizer(a security.Authorizer) security.Authorizer {
	if a == nil || !t.on() || t.pipe.Tracing == nil {
		return a
	}
	return func(ctx context.Context, call security.Call) error {
		err := a(ctx, call)
		if span := trace.SpanFromContext(ctx); span.IsRecording() {
			var denied *security.DeniedError
			switch {
			case err == nil:
				span.SetAttributes(meshtel.KeyDecision.String("allow"))
			case errors.As(err, &denied):
				span.SetAttributes(meshtel.KeyDecision.String("deny"), meshtel.KeyRule.String(denied.Rule))
			default:
				span.SetAttributes(meshtel.KeyDecision.String("error"))
			}
		}
		return err
	}
}

// serverOptions are the telemetry interceptors, to be put before every
// other server option so they run outermost.
func (t *meshTelemetry) serverOptions() []grpc.ServerOption {
	if !t.on() {
		return nil
	}
	unary, stream := t.pipe.ServerInterceptors()
	// Calls to methods the server does not register reach these through
	// NewServer's unknown-service handler, labelled under one rpc.method.
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream)}
}

// setMethods tells the pipeline which methods srv registers, so that
// rpc.method takes only those values and one for every other method.
// Call it before srv serves.
func (t *meshTelemetry) setMethods(srv grpcServer) {
	if t.on() {
		t.pipe.SetMethods(srv.GetServiceInfo())
	}
}

// dialOptions are the client counterpart of serverOptions: the call
// interceptors, outermost.
func (t *meshTelemetry) dialOptions(target string) []grpc.DialOption {
	var opts []grpc.DialOption
	if t.on() {
		unary, stream := t.pipe.ClientInterceptors(target)
		opts = append(opts, grpc.WithChainUnaryInterceptor(unary), grpc.WithChainStreamInterceptor(stream))
	}
	return opts
}

// xdsMetrics records the metrics of grpc-go's xDS client (accepted and
// refused updates, its connection to the control plane, the resources it
// holds) when metrics are on, else nil. It goes to the xds resolver, not
// on the channel as grpc-go's OpenTelemetry plugin would (a stats
// handler and interceptors on every call): the mesh records calls itself.
func (t *meshTelemetry) xdsMetrics() estats.MetricsRecorder {
	if mp := meshtel.MeterProvider(t.cfg.meter); mp != nil && !t.cfg.off {
		return meshtel.NewGRPCMetrics(mp, meshtel.XDSClientMetrics...)
	}
	return nil
}

// attemptDialOptions are the attempt interceptors, to be put right after
// the resilience interceptors: each attempt counted, a traced call's
// attempts each a span.
func (t *meshTelemetry) attemptDialOptions(target string) []grpc.DialOption {
	if !t.on() {
		return nil
	}
	unary, stream := t.pipe.AttemptInterceptors(target)
	return []grpc.DialOption{grpc.WithChainUnaryInterceptor(unary), grpc.WithChainStreamInterceptor(stream)}
}

// httpHandler wraps an HTTP server's handler (outside its authorization)
// in the telemetry pipeline. Off means off: h unchanged.
func (t *meshTelemetry) httpHandler(h http.Handler) http.Handler {
	if !t.on() {
		return h
	}
	return t.pipe.HTTPHandler(h)
}

// registerServer shows a server on the admin endpoint until close; kind is
// "server" (gRPC, with its health service) or "http-server".
func (t *meshTelemetry) registerServer(src security.Source, authorizer security.Authorizer, kind string) {
	if t == nil || t.admin == nil {
		return
	}
	scope := t.self.String()
	policy := admin.Policy{Kind: "authz", Scope: scope, Name: "default", Source: "default",
		Detail: "allow every caller with a valid SVID of a trusted trust domain (no WithAuthorizer)"}
	if authorizer != nil {
		policy = admin.Policy{Kind: "authz", Scope: scope, Name: "authorizer", Source: "code",
			Detail: "WithAuthorizer; denials below name the deciding rule"}
	}
	health := admin.Policy{Kind: "authz", Scope: scope, Name: "health", Source: "default",
		Detail: "/grpc.health.v1.Health/Check and Watch open to every authenticated caller; List under the authorizer"}
	if t.healthAuthorized {
		health.Source, health.Detail = "code", "WithHealthAuthorization: /grpc.health.v1.Health/* under the authorizer"
	}
	unregister := t.admin.Register(admin.Provider{
		Component: admin.Component{Kind: kind, Name: scope},
		XDS:       t.xdsStatus(),
		Identity:  func() admin.Identity { return identityView(src, t.self) },
		Policies: func() []admin.Policy {
			ps := []admin.Policy{policy}
			if kind == "server" {
				ps = append(ps, health)
			}
			if t.policies != nil {
				ps = append(ps, t.policies()...)
			}
			return ps
		},
	})
	t.mu.Lock()
	t.closers = append(t.closers, unregister)
	t.mu.Unlock()
}

// registerClient shows a client connection on the admin endpoint until the
// connection is closed (or close is called).
func (t *meshTelemetry) registerClient(src security.Source, target string, cc *grpc.ClientConn) {
	if t == nil {
		return
	}
	if t.admin != nil {
		t.registerTarget(src, target, cc)
	}
	t.mu.Lock()
	closers := len(t.closers)
	t.mu.Unlock()
	if closers == 0 {
		return
	}
	// A ClientConn has no close hook: release what the connection holds
	// (admin endpoint, watchers) once it shuts down.
	releaseOnShutdown(cc, t.close)
}

func (t *meshTelemetry) registerTarget(src security.Source, target string, cc *grpc.ClientConn) {
	unregister := t.admin.Register(admin.Provider{
		Component: admin.Component{Kind: "client", Name: target},
		XDS:       t.xdsStatus(),
		Identity:  func() admin.Identity { return identityView(src, t.self) },
		Targets: func() []admin.Target {
			tg := admin.Target{Target: target, State: strings.ToLower(cc.GetState().String()), Source: scheme(target)}
			if t.balancer != nil {
				tg.Balancer = t.balancer()
			}
			if t.breaker != nil {
				tg.Breaker = t.breaker()
			}
			if t.endpoints != nil {
				tg.Endpoints = t.endpoints()
			}
			return []admin.Target{tg}
		},
		Policies: t.policies,
	})
	t.mu.Lock()
	t.closers = append(t.closers, unregister)
	t.mu.Unlock()
}

// xdsStatus is the admin provider's XDS func: nil unless in xDS mode.
func (t *meshTelemetry) xdsStatus() func() *v3statuspb.ClientConfig {
	if t.xds == nil {
		return nil
	}
	return t.xds.ClientConfig
}

func scheme(target string) string {
	if i := strings.Index(target, "://"); i > 0 {
		return target[:i]
	}
	return "passthrough"
}

func svidObserver(src security.Source) func() (string, time.Time, bool) {
	return func() (string, time.Time, bool) {
		if src == nil {
			return "", time.Time{}, false
		}
		svid, err := src.GetX509SVID()
		if err != nil || len(svid.Certificates) == 0 {
			return "", time.Time{}, false
		}
		return svid.ID.String(), svid.Certificates[0].NotAfter, true
	}
}

func identityView(src security.Source, self spiffeid.ID) admin.Identity {
	v := admin.Identity{SPIFFEID: self.String(), Bundles: []admin.Bundle{}}
	svid, err := src.GetX509SVID()
	if err != nil {
		v.Error = err.Error()
		return v
	}
	if len(svid.Certificates) > 0 {
		leaf := svid.Certificates[0]
		v.SPIFFEID = svid.ID.String()
		v.Serial = leaf.SerialNumber.Text(16)
		v.NotBefore, v.Expiry = leaf.NotBefore.UTC(), leaf.NotAfter.UTC()
		v.Issuer = leaf.Issuer.String()
	}
	td := svid.ID.TrustDomain()
	b, err := src.GetX509BundleForTrustDomain(td)
	if err != nil {
		v.Error = err.Error()
		return v
	}
	bv := admin.Bundle{TrustDomain: td.Name(), Authorities: []admin.Authority{}}
	for _, c := range b.X509Authorities() {
		sum := sha256.Sum256(c.Raw)
		bv.Authorities = append(bv.Authorities, admin.Authority{
			Subject: c.Subject.String(), NotAfter: c.NotAfter.UTC(), SHA256: hex.EncodeToString(sum[:]),
		})
	}
	v.Bundles = append(v.Bundles, bv)
	return v
}

// newDialTelemetry is newTelemetry for Dial, which knows its own ID only
// from the source.
func newDialTelemetry(c *commonConfig) (*meshTelemetry, error) {
	if c.telemetry.off {
		return &meshTelemetry{cfg: c.telemetry, logger: c.logger}, nil
	}
	self, err := security.ID(c.identity)
	if err != nil {
		return nil, err
	}
	return newTelemetry(c, self)
}

// resilienceObserver turns the resilience client's events into metrics and
// admin events (retries, hedges, breaker changes, budget exhaustion,
// local rejections). Pass it with resilience.WithObserver when building
// the default client; it is empty while telemetry is off.
func (t *meshTelemetry) resilienceObserver() resilience.Observer {
	if !t.recording() {
		return resilience.Observer{}
	}
	m := t.rec
	return resilience.Observer{
		OnRetry: func(e resilience.RetryEvent) {
			detail := "attempt " + strconv.Itoa(e.Attempt)
			if e.Err != nil {
				detail += " after " + e.Err.Error()
			}
			m.RecordRetry(e.Destination, e.Method, detail)
		},
		OnHedge: func(e resilience.HedgeEvent) { m.RecordHedge(e.Destination, e.Method) },
		OnBreakerStateChange: func(e resilience.BreakerEvent) {
			m.BreakerStateChanged(e.Destination, string(e.From), string(e.To))
		},
		OnBudgetExhausted: func(e resilience.BudgetEvent) { m.RetryBudgetExhausted(e.Destination, e.Method) },
		OnRejected: func(e resilience.RejectedEvent) {
			detail := "rejected locally"
			if e.Err != nil {
				detail = e.Err.Error()
			}
			m.Rejected(e.Destination, e.Method, detail)
		},
	}
}

// attachResilience shows rc's breaker state and effective policy for
// target on the admin endpoint. Call it before registerClient.
func (t *meshTelemetry) attachResilience(rc *resilience.Client, target string) {
	if t == nil || rc == nil || t.admin == nil {
		return
	}
	effective := func() (resilience.Effective, bool) {
		for _, e := range rc.Destinations() { // Describe would create state for target
			if e.Destination == target && e.Method == "" {
				return e, true
			}
		}
		return resilience.Effective{}, false
	}
	t.breaker = func() string {
		if e, ok := effective(); ok {
			return string(e.BreakerState)
		}
		return ""
	}
	prev := t.policies
	t.policies = func() []admin.Policy {
		var ps []admin.Policy
		if prev != nil {
			ps = prev()
		}
		e, ok := effective()
		if !ok {
			return ps
		}
		return append(ps, admin.Policy{Kind: "resilience", Scope: target, Name: "client", Source: e.Source, Detail: describeResilience(e)})
	}
}

// describeResilience says in one line what a destination's policy does.
func describeResilience(e resilience.Effective) string {
	var b strings.Builder
	fmt.Fprintf(&b, "timeout %s; retry up to %d attempts, backoff %s..%s", e.Timeout, e.Retry.MaxAttempts, e.Retry.InitialBackoff, e.Retry.MaxBackoff)
	if e.Retry.PerTryTimeout > 0 {
		fmt.Fprintf(&b, ", %s per try", e.Retry.PerTryTimeout)
	}
	fmt.Fprintf(&b, "; budget %g%% of calls + %g/s over %s", e.Budget.Ratio*100, e.Budget.MinPerSecond, e.Budget.Window)
	fmt.Fprintf(&b, "; breaker %s, opens at %d failed calls in a row or %g%% of >=%d calls in %s, for %s",
		e.BreakerState, e.Breaker.ConsecutiveFailures, e.Breaker.FailureRate*100, e.Breaker.MinRequests, e.Breaker.Window, e.Breaker.OpenDelay)
	if e.Bulkhead.MaxConcurrent > 0 {
		fmt.Fprintf(&b, "; bulkhead %d in flight", e.Bulkhead.MaxConcurrent)
	}
	if e.RateLimit.Requests > 0 {
		fmt.Fprintf(&b, "; rate limit %d per %s", e.RateLimit.Requests, e.RateLimit.Per)
	}
	if e.Hedge.MaxHedges > 0 {
		fmt.Fprintf(&b, "; hedge reads after %s, up to %d", e.Hedge.Delay, e.Hedge.MaxHedges)
	}
	return b.String()
}
