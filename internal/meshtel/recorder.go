package meshtel

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Attribute keys of the mesh metrics.
const (
	KeyMethod   = attribute.Key("rpc.method") // full gRPC method
	KeyState    = attribute.Key("mesh.breaker.state")
	KeyFrom     = attribute.Key("mesh.breaker.from")
	KeyEndpoint = attribute.Key("mesh.endpoint")
	KeyTypeURL  = attribute.Key("xds.type_url")
	KeyOutcome  = attribute.Key("mesh.outcome") // "ok", "error", "nack"
)

// Event kinds, as Event.Kind spells them.
const (
	EventCall        = "call"
	EventRetry       = "retry"
	EventHedge       = "hedge"
	EventBudget      = "retry_budget_exhausted"
	EventBreaker     = "breaker"
	EventRejected    = "rejected"
	EventEjected     = "outlier_ejected"
	EventUnejected   = "outlier_unejected"
	EventDenied      = "denied"
	EventRotated     = "svid_rotated"
	EventDiscovery   = "discovery_update"
	EventXDS         = "xds_update"
	EventUnsupported = "unsupported_field"
)

// Event is one thing the mesh did, for the admin endpoint and `meshctl
// explain`. Fields that do not apply to a kind are empty.
type Event struct {
	Time     time.Time     `json:"time"`
	Kind     string        `json:"kind"`
	Side     string        `json:"side,omitempty"`     // "client" or "server"
	Target   string        `json:"target,omitempty"`   // dial target or destination service
	Method   string        `json:"method,omitempty"`   // full gRPC method
	Endpoint string        `json:"endpoint,omitempty"` // address of the endpoint that served the call
	Source   string        `json:"source,omitempty"`   // caller SPIFFE ID
	Peer     string        `json:"peer,omitempty"`     // callee SPIFFE ID (client side)
	Code     string        `json:"code,omitempty"`     // gRPC status code name
	Duration time.Duration `json:"duration,omitempty"`
	Rule     string        `json:"rule,omitempty"`     // deciding authorization rule
	Origin   string        `json:"origin,omitempty"`   // where config came from: "code", "xds", "consul"
	Resource string        `json:"resource,omitempty"` // config resource: xDS type URL or resource name
	Version  string        `json:"version,omitempty"`  // config version
	Detail   string        `json:"detail,omitempty"`   // error message, state change, count...
}

// IsChange says whether events of kind record a change of config or state
// (xDS and discovery updates, unsupported fields, breaker changes,
// ejections, SVID rotations) rather than traffic (calls, retries, hedges,
// denials...).
func IsChange(kind string) bool {
	switch kind {
	case EventXDS, EventUnsupported, EventDiscovery, EventBreaker, EventEjected, EventUnejected, EventRotated:
		return true
	}
	return false
}

// Recorder records the mesh's events (retries, breaker changes, denials,
// rotations, config updates) as OpenTelemetry metrics and hands every
// event, calls included, to its sinks (the admin endpoint). Call metrics
// are not recorded here: they go to the Hub. The methods match the
// callbacks of the leaf packages, so wiring one is a one-line closure. A
// nil *Recorder records nothing. Safe for concurrent use.
//
// Instruments (all under the scope ScopeName):
//
//	mesh.retries                 counter   target, method
//	mesh.hedges                  counter   target, method
//	mesh.retry_budget.exhausted  counter   target
//	mesh.rejected                counter   target, method (breaker open, bulkhead full, rate limited)
//	mesh.breaker.transitions     counter   target, from, state
//	mesh.outlier.ejections       counter   target, endpoint
//	mesh.authz.denials           counter   rule, source, method
//	mesh.svid.rotations          counter   source
//	mesh.svid.expiry             gauge     unix seconds of the current SVID's expiry, source (ObserveSVID)
//	mesh.discovery.updates       counter   target, outcome
//	mesh.discovery.endpoints     gauge     endpoints in the last update, target
//	mesh.xds.updates             counter   type_url, outcome ("ok" or "nack")
type Recorder struct {
	retries     metric.Int64Counter
	hedges      metric.Int64Counter
	budget      metric.Int64Counter
	rejected    metric.Int64Counter
	breaker     metric.Int64Counter
	ejections   metric.Int64Counter
	denials     metric.Int64Counter
	rotations   metric.Int64Counter
	expiry      metric.Float64ObservableGauge
	meter       metric.Meter
	discovery   metric.Int64Counter
	endpoints   metric.Int64Gauge
	xds         metric.Int64Counter
	unsupported metric.Int64Counter

	mu     sync.RWMutex
	sinks  []func(Event)
	nsinks atomic.Int32
}

// NewRecorder creates the mesh instruments on mp (the global provider when
// nil). With a no-op provider every method costs a few nanoseconds.
func NewRecorder(mp metric.MeterProvider) *Recorder {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(ScopeName)
	// Instrument constructors only fail on invalid names; ours are valid,
	// and the API hands back a working no-op instrument beside any error.
	var mt Recorder
	mt.retries, _ = m.Int64Counter("mesh.retries", metric.WithUnit("{retry}"), metric.WithDescription("Retry attempts."))
	mt.hedges, _ = m.Int64Counter("mesh.hedges", metric.WithUnit("{hedge}"), metric.WithDescription("Hedged attempts."))
	mt.budget, _ = m.Int64Counter("mesh.retry_budget.exhausted", metric.WithUnit("{retry}"), metric.WithDescription("Retries refused because the retry budget was spent."))
	mt.rejected, _ = m.Int64Counter("mesh.rejected", metric.WithUnit("{attempt}"), metric.WithDescription("Attempts refused locally: breaker open, bulkhead full, rate limited."))
	mt.breaker, _ = m.Int64Counter("mesh.breaker.transitions", metric.WithUnit("{transition}"), metric.WithDescription("Circuit breaker state changes."))
	mt.ejections, _ = m.Int64Counter("mesh.outlier.ejections", metric.WithUnit("{ejection}"), metric.WithDescription("Endpoints ejected by outlier detection."))
	mt.denials, _ = m.Int64Counter("mesh.authz.denials", metric.WithUnit("{call}"), metric.WithDescription("Calls refused by authorization, by deciding rule."))
	mt.rotations, _ = m.Int64Counter("mesh.svid.rotations", metric.WithUnit("{rotation}"), metric.WithDescription("X.509-SVID rotations."))
	mt.meter = m
	mt.expiry, _ = m.Float64ObservableGauge("mesh.svid.expiry", metric.WithUnit("s"), metric.WithDescription("Expiry of the current X.509-SVID, Unix seconds."))
	mt.discovery, _ = m.Int64Counter("mesh.discovery.updates", metric.WithUnit("{update}"), metric.WithDescription("Endpoint updates from discovery, by outcome."))
	mt.endpoints, _ = m.Int64Gauge("mesh.discovery.endpoints", metric.WithUnit("{endpoint}"), metric.WithDescription("Endpoints in the last discovery update."))
	mt.xds, _ = m.Int64Counter("mesh.xds.updates", metric.WithUnit("{update}"), metric.WithDescription("xDS resource updates, by type and outcome (ok or nack)."))
	mt.unsupported, _ = m.Int64Counter("mesh.config.unsupported_fields", metric.WithUnit("{field}"), metric.WithDescription("Config fields received but not supported."))
	return &mt
}

// OnEvent adds fn to the sinks that receive every recorded event. fn must
// be quick and safe for concurrent use. The returned func removes it.
func (m *Recorder) OnEvent(fn func(Event)) (remove func()) {
	if m == nil || fn == nil {
		return func() {}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sinks = append(m.sinks, fn)
	m.nsinks.Add(1)
	idx := len(m.sinks) - 1
	removed := false
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if removed {
			return
		}
		removed = true
		m.sinks[idx] = nil
		m.nsinks.Add(-1)
	}
}

func (m *Recorder) emit(e Event) {
	if m.nsinks.Load() == 0 {
		return
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	for _, fn := range m.sinks {
		if fn != nil {
			fn(e)
		}
	}
}

// callEvents reports whether calls are to be handed to sinks.
func (m *Recorder) callEvents() bool { return m != nil && m.nsinks.Load() > 0 }

var bg = context.Background()

// RecordCall hands one finished call to the sinks.
func (m *Recorder) RecordCall(e Event) {
	if m == nil {
		return
	}
	e.Kind = EventCall
	m.emit(e)
}

// RecordRetry records a retry attempt of method to dest (a target or
// destination service); detail says why (the error retried on).
func (m *Recorder) RecordRetry(dest, method, detail string) {
	if m == nil {
		return
	}
	m.retries.Add(bg, 1, metric.WithAttributes(KeyTarget.String(dest), KeyMethod.String(method)))
	m.emit(Event{Kind: EventRetry, Side: "client", Target: dest, Method: method, Detail: detail})
}

// RecordHedge records a hedged attempt of method to dest.
func (m *Recorder) RecordHedge(dest, method string) {
	if m == nil {
		return
	}
	m.hedges.Add(bg, 1, metric.WithAttributes(KeyTarget.String(dest), KeyMethod.String(method)))
	m.emit(Event{Kind: EventHedge, Side: "client", Target: dest, Method: method})
}

// RetryBudgetExhausted records a retry to dest refused by the retry budget.
func (m *Recorder) RetryBudgetExhausted(dest, method string) {
	if m == nil {
		return
	}
	m.budget.Add(bg, 1, metric.WithAttributes(KeyTarget.String(dest)))
	m.emit(Event{Kind: EventBudget, Side: "client", Target: dest, Method: method})
}

// Rejected records an attempt to dest refused locally (breaker open,
// bulkhead full, rate limited) and so never sent.
func (m *Recorder) Rejected(dest, method, detail string) {
	if m == nil {
		return
	}
	m.rejected.Add(bg, 1, metric.WithAttributes(KeyTarget.String(dest), KeyMethod.String(method)))
	m.emit(Event{Kind: EventRejected, Side: "client", Target: dest, Method: method, Detail: detail})
}

// BreakerStateChanged records a circuit breaker for dest moving from one
// state to another ("closed", "open", "half-open").
func (m *Recorder) BreakerStateChanged(dest, from, to string) {
	if m == nil {
		return
	}
	m.breaker.Add(bg, 1, metric.WithAttributes(KeyTarget.String(dest), KeyFrom.String(from), KeyState.String(to)))
	m.emit(Event{Kind: EventBreaker, Side: "client", Target: dest, Detail: from + " -> " + to})
}

// OutlierEjected records outlier detection ejecting endpoint of dest
// (ejected true) or returning it (false); reason is free text.
func (m *Recorder) OutlierEjected(dest, endpoint string, ejected bool, reason string) {
	if m == nil {
		return
	}
	kind := EventUnejected
	if ejected {
		kind = EventEjected
		m.ejections.Add(bg, 1, metric.WithAttributes(KeyTarget.String(dest), KeyEndpoint.String(endpoint)))
	}
	m.emit(Event{Kind: kind, Side: "client", Target: dest, Endpoint: endpoint, Detail: reason})
}

// AuthzDenied records a call to method (a full gRPC method, or
// "VERB /path" for HTTP) by caller refused by rule. For HTTP the metric is
// labelled by the verb only: a refused path is whatever the caller sent,
// and as a label it would grow without bound under probing. The admin
// event keeps the path.
func (m *Recorder) AuthzDenied(rule, caller, method string) {
	if m == nil {
		return
	}
	label, _, _ := strings.Cut(method, " ")
	m.denials.Add(bg, 1, metric.WithAttributes(KeyRule.String(rule), KeySource.String(caller), KeyMethod.String(label)))
	m.emit(Event{Kind: EventDenied, Side: "server", Source: caller, Method: method, Rule: rule})
}

// SVIDRotated records that the workload id got a new SVID expiring at
// expiry.
func (m *Recorder) SVIDRotated(id string, expiry time.Time) {
	if m == nil {
		return
	}
	m.rotations.Add(bg, 1, metric.WithAttributes(KeySource.String(id)))
	m.emit(Event{Kind: EventRotated, Source: id, Detail: "expires " + expiry.UTC().Format(time.RFC3339)})
}

// ObserveSVID makes the mesh.svid.expiry gauge report what current returns
// (the SPIFFE ID and expiry of the SVID in use, ok false when there is
// none) each time metrics are collected. The returned func stops it.
func (m *Recorder) ObserveSVID(current func() (id string, expiry time.Time, ok bool)) (unregister func()) {
	if m == nil {
		return func() {}
	}
	reg, err := m.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if id, exp, ok := current(); ok {
			o.ObserveFloat64(m.expiry, float64(exp.Unix()), metric.WithAttributes(KeySource.String(id)))
		}
		return nil
	}, m.expiry)
	if err != nil {
		return func() {}
	}
	var once sync.Once
	return func() { once.Do(func() { _ = reg.Unregister() }) }
}

// DiscoveryUpdate records an endpoint update for target with n endpoints,
// or a failed one (err non-nil; n is then ignored).
func (m *Recorder) DiscoveryUpdate(target string, n int, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.discovery.Add(bg, 1, metric.WithAttributes(KeyTarget.String(target), KeyOutcome.String("error")))
		m.emit(Event{Kind: EventDiscovery, Side: "client", Target: target, Code: "error", Detail: err.Error()})
		return
	}
	m.discovery.Add(bg, 1, metric.WithAttributes(KeyTarget.String(target), KeyOutcome.String("ok")))
	m.endpoints.Record(bg, int64(n), metric.WithAttributes(KeyTarget.String(target)))
	m.emit(Event{Kind: EventDiscovery, Side: "client", Target: target, Detail: strconv.Itoa(n) + " endpoints"})
}

// XDSUpdate records an xDS response of typeURL at version that the xDS
// client of scope (a dial target or a server's SPIFFE ID) accepted or
// NACKed (nack true, detail the reason).
func (m *Recorder) XDSUpdate(scope, typeURL, version string, nack bool, detail string) {
	if m == nil {
		return
	}
	outcome := "ok"
	if nack {
		outcome = "nack"
	}
	m.xds.Add(bg, 1, metric.WithAttributes(KeyTypeURL.String(typeURL), KeyOutcome.String(outcome)))
	m.emit(Event{Kind: EventXDS, Origin: "xds", Target: scope, Resource: typeURL, Version: version, Code: outcome, Detail: detail})
}

// UnsupportedField records a config field that was received but that the
// mesh does not act on (grpc-go ignores such fields silently). source is
// "xds" or "consul", scope the dial target or server it reached, resource
// names the resource, field the field path.
func (m *Recorder) UnsupportedField(source, scope, resource, field string) {
	if m == nil {
		return
	}
	m.unsupported.Add(bg, 1, metric.WithAttributes(attribute.String("mesh.config.source", source), attribute.String("mesh.config.field", field)))
	m.emit(Event{Kind: EventUnsupported, Origin: source, Target: scope, Resource: resource, Detail: field})
}
