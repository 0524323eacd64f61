package mesh

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	v3statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental/stats"
	grpcotel "google.golang.org/grpc/stats/opentelemetry"

	"github.com/gridmesh/gridmesh/internal/xdsstatus"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/security"
	"github.com/gridmesh/gridmesh/telemetry"
	"github.com/gridmesh/gridmesh/telemetry/admin"
)

// telemetryConfig is the telemetry part of commonConfig.
type telemetryConfig struct {
	tracer    trace.TracerProvider
	meter     metric.MeterProvider
	off       bool
	adminAddr string
}

// WithTracerProvider sets where the spans of the mesh's otelgrpc stats
// handlers go. Default: the global TracerProvider (otel.GetTracerProvider),
// a no-op until telemetry.Setup or otel.SetTracerProvider installs one.
//
// Off means off: NewServer and Dial install the stats handlers only if a
// provider is an SDK one when they run, and the metrics interceptors only
// if metrics are on or WithAdmin is given. Set up telemetry before building
// servers and clients. With telemetry off, W3C trace context does not pass
// through the process.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return bothOption(func(c *commonConfig) { c.telemetry.tracer = tp })
}

// WithMeterProvider sets where the mesh's metrics go: the otelgrpc RPC
// metrics and the mesh metrics of telemetry.Metrics (calls labelled by
// caller and callee SPIFFE ID, retries, breaker changes, denials, ...).
// Default: the global MeterProvider, a no-op until one is installed.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return bothOption(func(c *commonConfig) { c.telemetry.meter = mp })
}

// WithoutTelemetry installs no stats handlers and no metrics interceptors:
// no spans, no metrics, no trace context propagation, no events for the
// admin endpoint. Telemetry left on with no-op providers costs little (see
// bench/telemetry); this removes even that.
func WithoutTelemetry() Option {
	return bothOption(func(c *commonConfig) { c.telemetry.off = true })
}

// meshTelemetry is what one server or client connection has of telemetry.
type meshTelemetry struct {
	cfg     telemetryConfig
	metrics *telemetry.Metrics
	self    spiffeid.ID
	admin   *admin.Server // nil unless WithAdmin

	// Hooks for the admin endpoint, nil until the mesh wires them: the
	// balancer policy, breaker state and endpoints of a client's target.
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
	t.metrics = telemetry.NewMetrics(t.cfg.meter)
	if t.cfg.adminAddr != "" {
		a, release, err := acquireAdmin(t.cfg.adminAddr, c.logger)
		if err != nil {
			return nil, err
		}
		t.admin = a
		t.closers = append(t.closers, release, t.metrics.OnEvent(a.Record))
	}
	if telemetry.MetricsEnabled(t.cfg.meter) {
		t.closers = append(t.closers, t.metrics.ObserveSVID(svidObserver(c.identity)))
	}
	if t.interceptorsOn() { // metrics on or admin endpoint: count rotations
		t.closers = append(t.closers, watchRotations(c.identity, t.metrics))
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

// onDeny counts denials and records them for the admin endpoint, then calls
// next (the WithDenialHook function, may be nil).
func (t *meshTelemetry) onDeny(next func(*security.DeniedError)) func(*security.DeniedError) {
	if !t.interceptorsOn() {
		return next
	}
	m := t.metrics
	return func(d *security.DeniedError) {
		m.AuthzDenied(d.Rule, d.Caller.String(), d.Target)
		if next != nil {
			next(d)
		}
	}
}

// Off means off: what a server or client installs is decided when it is
// built. The otelgrpc stats handler only when a tracer or meter provider is
// an SDK one (grpc-go builds per-call stats events for any installed
// handler, even one that ignores them); the metrics interceptors only when
// metrics are on or the admin endpoint wants call events.
func (t *meshTelemetry) statsOn() bool {
	return t != nil && !t.cfg.off && telemetry.Enabled(t.cfg.tracer, t.cfg.meter)
}

func (t *meshTelemetry) interceptorsOn() bool {
	return t != nil && !t.cfg.off && (t.admin != nil || telemetry.MetricsEnabled(t.cfg.meter))
}

// serverOptions are the stats handler and the metrics interceptors, to be
// put before every other server option so the interceptors run outermost.
func (t *meshTelemetry) serverOptions() []grpc.ServerOption {
	var opts []grpc.ServerOption
	if t.statsOn() {
		opts = append(opts, grpc.StatsHandler(telemetry.ServerHandler(t.cfg.tracer, t.cfg.meter, telemetry.WithSelf(t.self.String()))))
	}
	if t.interceptorsOn() {
		unary, stream := telemetry.ServerInterceptors(t.metrics, t.self.String())
		opts = append(opts, grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream))
	}
	return opts
}

// dialOptions are the client counterpart of serverOptions.
func (t *meshTelemetry) dialOptions(target string) []grpc.DialOption {
	var opts []grpc.DialOption
	if t.statsOn() {
		opts = append(opts, grpc.WithStatsHandler(telemetry.ClientHandler(t.cfg.tracer, t.cfg.meter, telemetry.WithSelf(t.self.String()))))
	}
	if t.interceptorsOn() {
		unary, stream := telemetry.ClientInterceptors(t.metrics, t.self.String(), target)
		opts = append(opts, grpc.WithChainUnaryInterceptor(unary), grpc.WithChainStreamInterceptor(stream))
	}
	if strings.HasPrefix(target, "xds:") && telemetry.MetricsEnabled(t.cfg.meter) {
		// grpc-go's xDS client reports accepted and NACKed updates, its
		// connection to the control plane and its resources only through
		// a stats plugin: take those metrics, not the per-call ones
		// (otelgrpc and the mesh already record calls).
		mp := t.cfg.meter
		if mp == nil {
			mp = otel.GetMeterProvider()
		}
		opts = append(opts, grpcotel.DialOption(grpcotel.Options{MetricsOptions: grpcotel.MetricsOptions{
			MeterProvider: mp,
			Metrics: stats.NewMetrics("grpc.xds_client.resource_updates_valid", "grpc.xds_client.resource_updates_invalid",
				"grpc.xds_client.server_failure", "grpc.xds_client.connected", "grpc.xds_client.resources"),
		}}))
	}
	return opts
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

// otelhttpOptions are the otelhttp options for NewHTTPServer and
// HTTPClient: W3C propagation and the providers of WithTracerProvider and
// WithMeterProvider (the globals when unset).
func (c *commonConfig) otelhttpOptions() []otelhttp.Option {
	opts := []otelhttp.Option{otelhttp.WithPropagators(telemetry.Propagator())}
	if c.telemetry.tracer != nil {
		opts = append(opts, otelhttp.WithTracerProvider(c.telemetry.tracer))
	}
	if c.telemetry.meter != nil {
		opts = append(opts, otelhttp.WithMeterProvider(c.telemetry.meter))
	}
	return opts
}

// rotationWatchers watch each identity source of the process once, however
// many servers and clients share it, so a rotation counts once.
var rotationWatchers = struct {
	sync.Mutex
	m map[security.Source]*rotationWatcher
}{m: map[security.Source]*rotationWatcher{}}

type rotationWatcher struct {
	refs int
	stop chan struct{}
	done chan struct{}
}

// rotationPoll is how often a source without a Changed channel is polled.
const rotationPoll = 10 * time.Second

// watchRotations calls m.SVIDRotated whenever src's SVID changes, until the
// returned func is called by every user of src. Sources with a
// Changed() <-chan struct{} (closed at the next update: DevSource,
// FileSource) are followed exactly; others are polled every 10s.
func watchRotations(src security.Source, m *telemetry.Metrics) (release func()) {
	if src == nil || !reflect.TypeOf(src).Comparable() {
		return func() {}
	}
	rotationWatchers.Lock()
	defer rotationWatchers.Unlock()
	w := rotationWatchers.m[src]
	if w == nil {
		w = &rotationWatcher{stop: make(chan struct{}), done: make(chan struct{})}
		rotationWatchers.m[src] = w
		go w.run(src, m)
	}
	w.refs++
	var once sync.Once
	return func() {
		once.Do(func() {
			rotationWatchers.Lock()
			defer rotationWatchers.Unlock()
			if w.refs--; w.refs == 0 {
				delete(rotationWatchers.m, src)
				close(w.stop)
				<-w.done
			}
		})
	}
}

func (w *rotationWatcher) run(src security.Source, m *telemetry.Metrics) {
	defer close(w.done)
	changer, _ := src.(interface{ Changed() <-chan struct{} })
	serial := func() string {
		svid, err := src.GetX509SVID()
		if err != nil || len(svid.Certificates) == 0 {
			return ""
		}
		return svid.Certificates[0].SerialNumber.String()
	}
	last := serial()
	for {
		// Subscribe before comparing, so an update in between is not lost.
		var changed <-chan struct{}
		var timer *time.Timer
		var tick <-chan time.Time
		if changer != nil {
			changed = changer.Changed()
		} else {
			timer = time.NewTimer(rotationPoll)
			tick = timer.C
		}
		if now := serial(); now != "" && now != last {
			last = now
			if svid, err := src.GetX509SVID(); err == nil && len(svid.Certificates) > 0 {
				m.SVIDRotated(svid.ID.String(), svid.Certificates[0].NotAfter)
			}
		}
		select {
		case <-w.stop:
			if timer != nil {
				timer.Stop()
			}
			return
		case <-changed:
		case <-tick:
		}
	}
}

// httpHandler wraps an HTTP server's handler (outside its authorization)
// in the telemetry that is on: the identity-labelled call metrics and
// admin events, and otelhttp spans with W3C propagation. Off means off: h
// unchanged.
func (t *meshTelemetry) httpHandler(c *commonConfig, h http.Handler) http.Handler {
	if t.interceptorsOn() {
		h = telemetry.HTTPHandler(t.metrics, t.self.String(), h)
	}
	if t.statsOn() {
		h = otelhttp.NewHandler(h, "gridmesh.http.server", c.otelhttpOptions()...)
	}
	return h
}

// httpTransport is httpHandler for an HTTP client's transport; target ""
// labels each request with its URL host.
func (t *meshTelemetry) httpTransport(c *commonConfig, target string, rt http.RoundTripper) http.RoundTripper {
	if t.interceptorsOn() {
		rt = telemetry.HTTPTransport(t.metrics, t.self.String(), target, rt)
	}
	if t.statsOn() {
		rt = otelhttp.NewTransport(rt, c.otelhttpOptions()...)
	}
	return rt
}

// resilienceObserver turns the resilience client's events into metrics and
// admin events (retries, hedges, breaker changes, budget exhaustion,
// local rejections). Pass it with resilience.WithObserver when building
// the default client; it is empty while telemetry is off.
func (t *meshTelemetry) resilienceObserver() resilience.Observer {
	if !t.interceptorsOn() {
		return resilience.Observer{}
	}
	m := t.metrics
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
	fmt.Fprintf(&b, "; breaker %s, opens at %d consecutive failures or %g%% of >=%d calls in %s, for %s",
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
