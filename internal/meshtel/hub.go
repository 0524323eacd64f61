package meshtel

import (
	"context"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the mesh's metrics.
const ScopeName = "github.com/gridmesh/gridmesh/mesh"

// Bounds are the upper bounds, in seconds, of the latency histograms'
// buckets: finer than the semantic conventions' HTTP default at the low
// end, where calls inside a mesh are.
var Bounds = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// boundsNanos are Bounds in nanoseconds, compared against durations on
// the call path without a float conversion.
var boundsNanos = func() [16]int64 {
	var b [16]int64
	for i, s := range Bounds {
		b[i] = int64(math.Round(s * 1e9))
	}
	return b
}()

const nBuckets = 17 // len(Bounds)+1, the last is +Inf

// MaxSeries bounds the series of one metric: label values beyond it are
// counted in one overflow series (attribute otel.metric.overflow=true), as
// the OpenTelemetry SDK's cardinality limit does.
const MaxSeries = 2000

// Key holds the label values of one series; each metric says which
// attribute each field is.
type Key struct {
	Method, Source, Destination, Target, Status, Route string
	Code                                               int
}

// Series is one time series: a histogram of call durations (or, for a
// counter, only Count). Its methods are lock-free and safe for concurrent
// use; recording allocates nothing.
type Series struct {
	attrs     attribute.Set
	count     atomic.Uint64
	sumNanos  atomic.Int64
	buckets   [nBuckets]atomic.Uint64
	exemplars [nBuckets]atomic.Pointer[exemplar]
}

type exemplar struct {
	value   float64
	at      time.Time
	traceID trace.TraceID
	spanID  trace.SpanID
}

// Observe adds one call that took d. sc, when sampled, becomes the
// exemplar of d's bucket (the last sampled call in each bucket is kept).
func (s *Series) Observe(d time.Duration, sc trace.SpanContext) {
	n := int64(d)
	i := 0
	for i < len(boundsNanos) && n > boundsNanos[i] {
		i++
	}
	s.buckets[i].Add(1)
	s.sumNanos.Add(n)
	s.count.Add(1)
	if sc.IsSampled() {
		s.exemplars[i].Store(&exemplar{value: d.Seconds(), at: time.Now(), traceID: sc.TraceID(), spanID: sc.SpanID()})
	}
}

// Add counts one event (for counters).
func (s *Series) Add() { s.count.Add(1) }

// Kind says how a metric is exported.
type Kind int

// Metric kinds.
const (
	Histogram Kind = iota
	Counter
)

// Metric is one named metric and its series, created on first use from a
// Key. Safe for concurrent use; lookups of known series take no lock and
// allocate nothing.
type Metric struct {
	name, unit, desc string
	kind             Kind
	attrs            func(Key) attribute.Set

	series   atomic.Pointer[map[Key]*Series]
	mu       sync.Mutex // serializes adding series
	overflow *Series
}

func newMetric(name, unit, desc string, kind Kind, attrs func(Key) attribute.Set) *Metric {
	m := &Metric{name: name, unit: unit, desc: desc, kind: kind, attrs: attrs}
	empty := map[Key]*Series{}
	m.series.Store(&empty)
	m.overflow = &Series{attrs: attribute.NewSet(attribute.Bool("otel.metric.overflow", true))}
	return m
}

// Series returns the series for k, creating it (copy on write) the first
// time; past MaxSeries it returns the overflow series.
func (m *Metric) Series(k Key) *Series {
	if s, ok := (*m.series.Load())[k]; ok {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := *m.series.Load()
	if s, ok := cur[k]; ok {
		return s
	}
	if len(cur) >= MaxSeries {
		return m.overflow
	}
	next := make(map[Key]*Series, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	s := &Series{attrs: m.attrs(k)}
	next[k] = s
	m.series.Store(&next)
	return s
}

// Len returns the number of series (the overflow series not counted).
func (m *Metric) Len() int { return len(*m.series.Load()) }

func (m *Metric) collect(start, now time.Time) (metricdata.Metrics, bool) {
	cur := *m.series.Load()
	all := make([]*Series, 0, len(cur)+1)
	for _, s := range cur {
		all = append(all, s)
	}
	if m.overflow.count.Load() > 0 {
		all = append(all, m.overflow)
	}
	if len(all) == 0 {
		return metricdata.Metrics{}, false
	}
	// A stable order makes exports and tests readable.
	sort.Slice(all, func(i, j int) bool {
		return all[i].attrs.Encoded(attribute.DefaultEncoder()) < all[j].attrs.Encoded(attribute.DefaultEncoder())
	})
	out := metricdata.Metrics{Name: m.name, Description: m.desc, Unit: m.unit}
	if m.kind == Counter {
		sum := metricdata.Sum[int64]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true}
		for _, s := range all {
			sum.DataPoints = append(sum.DataPoints, metricdata.DataPoint[int64]{
				Attributes: s.attrs, StartTime: start, Time: now, Value: int64(s.count.Load()),
			})
		}
		out.Data = sum
		return out, true
	}
	h := metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality}
	for _, s := range all {
		dp := metricdata.HistogramDataPoint[float64]{
			Attributes: s.attrs, StartTime: start, Time: now, Bounds: Bounds,
			BucketCounts: make([]uint64, nBuckets),
		}
		// Buckets first, count last: a call recorded meanwhile shows in
		// the next collection, never as a count without its bucket.
		var total uint64
		for i := range s.buckets {
			dp.BucketCounts[i] = s.buckets[i].Load()
			total += dp.BucketCounts[i]
			if e := s.exemplars[i].Load(); e != nil {
				tid, sid := e.traceID, e.spanID
				dp.Exemplars = append(dp.Exemplars, metricdata.Exemplar[float64]{
					Time: e.at, Value: e.value, TraceID: tid[:], SpanID: sid[:],
				})
			}
		}
		dp.Count = total
		dp.Sum = float64(s.sumNanos.Load()) / 1e9
		h.DataPoints = append(h.DataPoints, dp)
	}
	out.Data = h
	return out, true
}

// Hub holds the mesh's golden metrics for one telemetry owner (the
// Providers of telemetry.Setup) and hands them to the OpenTelemetry SDK
// at collection time: it is an sdkmetric.Producer. Safe for concurrent
// use.
type Hub struct {
	start time.Time

	RPCServer    *Metric // rpc.server.call.duration
	RPCClient    *Metric // rpc.client.call.duration
	RPCAttempts  *Metric // mesh.rpc.client.attempts
	HTTPServer   *Metric // http.server.request.duration
	HTTPClient   *Metric // http.client.request.duration
	HTTPAttempts *Metric // mesh.http.client.attempts
	metrics      []*Metric
	ids          idCache

	// Rotations are the SVID rotation watches of the servers and clients
	// recording here.
	Rotations Rotations
}

var _ sdkmetric.Producer = (*Hub)(nil)

// Attribute keys of the golden metrics beyond the semantic conventions'.
const (
	KeySource      = attribute.Key("mesh.source")      // caller SPIFFE ID
	KeyDestination = attribute.Key("mesh.destination") // callee SPIFFE ID ("" when no connection was made)
	KeyTarget      = attribute.Key("mesh.target")      // dial target, client side
)

// NewHub returns a Hub with no series.
func NewHub() *Hub {
	h := &Hub{start: time.Now()}
	grpcSys := attribute.String("rpc.system.name", "grpc")
	h.RPCServer = newMetric("rpc.server.call.duration", "s", "Measures the duration of an incoming Remote Procedure Call (RPC).", Histogram,
		func(k Key) attribute.Set {
			return attribute.NewSet(grpcSys, attribute.String("rpc.method", k.Method), attribute.String("rpc.response.status_code", k.Status),
				KeySource.String(k.Source), KeyDestination.String(k.Destination))
		})
	clientRPC := func(k Key) attribute.Set {
		return attribute.NewSet(grpcSys, attribute.String("rpc.method", k.Method), attribute.String("rpc.response.status_code", k.Status),
			KeySource.String(k.Source), KeyDestination.String(k.Destination), KeyTarget.String(k.Target))
	}
	h.RPCClient = newMetric("rpc.client.call.duration", "s", "Measures the duration of an outgoing Remote Procedure Call (RPC), retries included.", Histogram, clientRPC)
	h.RPCAttempts = newMetric("mesh.rpc.client.attempts", "{attempt}", "Attempts of outgoing RPCs: a call retried or hedged makes several.", Counter, clientRPC)
	h.HTTPServer = newMetric("http.server.request.duration", "s", "Duration of HTTP server requests.", Histogram,
		func(k Key) attribute.Set {
			kv := []attribute.KeyValue{attribute.String("http.request.method", k.Method), attribute.Int("http.response.status_code", k.Code),
				KeySource.String(k.Source), KeyDestination.String(k.Destination)}
			if k.Route != "" {
				kv = append(kv, attribute.String("http.route", k.Route))
			}
			return attribute.NewSet(kv...)
		})
	clientHTTP := func(k Key) attribute.Set {
		kv := []attribute.KeyValue{attribute.String("http.request.method", k.Method),
			KeySource.String(k.Source), KeyDestination.String(k.Destination), KeyTarget.String(k.Target)}
		if k.Code != 0 {
			kv = append(kv, attribute.Int("http.response.status_code", k.Code))
		}
		if k.Status != "" {
			kv = append(kv, attribute.String("error.type", k.Status))
		}
		return attribute.NewSet(kv...)
	}
	h.HTTPClient = newMetric("http.client.request.duration", "s", "Duration of HTTP client requests, retries included.", Histogram, clientHTTP)
	h.HTTPAttempts = newMetric("mesh.http.client.attempts", "{attempt}", "Attempts of outgoing HTTP requests: a request retried or hedged makes several.", Counter, clientHTTP)
	h.metrics = []*Metric{h.RPCServer, h.RPCClient, h.RPCAttempts, h.HTTPServer, h.HTTPClient, h.HTTPAttempts}
	return h
}

// Produce returns the cumulative state of every series. It is what the
// SDK's readers call at collection time.
func (h *Hub) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	now := time.Now()
	sm := metricdata.ScopeMetrics{Scope: instrumentation.Scope{Name: ScopeName}}
	for _, m := range h.metrics {
		if md, ok := m.collect(h.start, now); ok {
			sm.Metrics = append(sm.Metrics, md)
		}
	}
	if len(sm.Metrics) == 0 {
		return nil, nil
	}
	return []metricdata.ScopeMetrics{sm}, nil
}

// HubOwner is implemented by the meter providers telemetry.Setup builds:
// their readers collect the Hub.
type HubOwner interface{ MeshHub() *Hub }

// WithHub returns mp carrying hub, for the mesh to record its calls into
// (mp's readers must collect hub as a Producer).
func WithHub(mp metric.MeterProvider, hub *Hub) metric.MeterProvider {
	return &hubProvider{MeterProvider: mp, hub: hub}
}

type hubProvider struct {
	metric.MeterProvider
	hub *Hub
}

func (m *hubProvider) MeshHub() *Hub { return m.hub }

// NewManualProvider returns an SDK MeterProvider whose ManualReader also
// collects a new Hub: for tests and benchmarks that read the mesh's
// metrics in process. Shut it down with the returned func.
func NewManualProvider() (metric.MeterProvider, *sdkmetric.ManualReader, func()) {
	hub := NewHub()
	reader := sdkmetric.NewManualReader(sdkmetric.WithProducer(hub))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	return WithHub(mp, hub), reader, func() { _ = mp.Shutdown(context.Background()) }
}
