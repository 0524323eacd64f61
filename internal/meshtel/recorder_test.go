package meshtel_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/gridmesh/gridmesh/internal/meshtel"
)

// TestEventCounters records a known number of each event and reads the
// counters back through a ManualReader, and the events through a sink.
func TestEventCounters(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	m := meshtel.NewRecorder(mp)
	var kinds []string
	remove := m.OnEvent(func(e meshtel.Event) { kinds = append(kinds, e.Kind) })

	const dest = "xds:///trading"
	for range 3 {
		m.RecordRetry(dest, "/rec.Trading/Buy", "UNAVAILABLE")
	}
	m.RecordHedge(dest, "/rec.Trading/Quote")
	m.RetryBudgetExhausted(dest, "/rec.Trading/Buy")
	m.BreakerStateChanged(dest, "closed", "open")
	m.BreakerStateChanged(dest, "open", "half-open")
	m.OutlierEjected(dest, "10.0.0.1:8443", true, "5 consecutive errors")
	m.OutlierEjected(dest, "10.0.0.1:8443", false, "")
	m.AuthzDenied("default deny", "spiffe://example.org/guest", "/rec.Trading/Buy")
	m.SVIDRotated("spiffe://example.org/trading", time.Unix(2000000000, 0))
	m.DiscoveryUpdate(dest, 3, nil)
	m.DiscoveryUpdate(dest, 0, errors.New("consul: connection refused"))
	m.XDSUpdate("xds:///trading", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "7", false, "")
	m.XDSUpdate("xds:///trading", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "8", true, "bad lb policy")
	m.UnsupportedField("xds", "xds:///trading", "Cluster trading", "cluster.dns_lookup_family")
	stop := m.ObserveSVID(func() (string, time.Time, bool) {
		return "spiffe://example.org/trading", time.Unix(2000000000, 0), true
	})
	defer stop()
	remove()
	m.RecordRetry(dest, "/rec.Trading/Buy", "after remove: counted, not sent to the sink")

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, sm := range rm.ScopeMetrics {
		for _, md := range sm.Metrics {
			switch d := md.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					got[md.Name+label(dp.Attributes)] += float64(dp.Value)
				}
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					got[md.Name+label(dp.Attributes)] = float64(dp.Value)
				}
			case metricdata.Gauge[float64]:
				for _, dp := range d.DataPoints {
					got[md.Name+label(dp.Attributes)] = dp.Value
				}
			}
		}
	}
	want := map[string]float64{
		"mesh.retries{mesh.target=xds:///trading,rpc.method=/rec.Trading/Buy}":                                                4,
		"mesh.hedges{mesh.target=xds:///trading,rpc.method=/rec.Trading/Quote}":                                               1,
		"mesh.retry_budget.exhausted{mesh.target=xds:///trading}":                                                             1,
		"mesh.breaker.transitions{mesh.breaker.from=closed,mesh.breaker.state=open,mesh.target=xds:///trading}":               1,
		"mesh.breaker.transitions{mesh.breaker.from=open,mesh.breaker.state=half-open,mesh.target=xds:///trading}":            1,
		"mesh.outlier.ejections{mesh.endpoint=10.0.0.1:8443,mesh.target=xds:///trading}":                                      1,
		"mesh.authz.denials{mesh.authz.rule=default deny,mesh.source=spiffe://example.org/guest,rpc.method=/rec.Trading/Buy}": 1,
		"mesh.svid.rotations{mesh.source=spiffe://example.org/trading}":                                                       1,
		"mesh.svid.expiry{mesh.source=spiffe://example.org/trading}":                                                          2000000000,
		"mesh.discovery.updates{mesh.outcome=ok,mesh.target=xds:///trading}":                                                  1,
		"mesh.discovery.updates{mesh.outcome=error,mesh.target=xds:///trading}":                                               1,
		"mesh.discovery.endpoints{mesh.target=xds:///trading}":                                                                3,
		"mesh.xds.updates{mesh.outcome=ok,xds.type_url=type.googleapis.com/envoy.config.cluster.v3.Cluster}":                  1,
		"mesh.xds.updates{mesh.outcome=nack,xds.type_url=type.googleapis.com/envoy.config.cluster.v3.Cluster}":                1,
		"mesh.config.unsupported_fields{mesh.config.field=cluster.dns_lookup_family,mesh.config.source=xds}":                  1,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
	wantKinds := []string{"retry", "retry", "retry", "hedge", "retry_budget_exhausted", "breaker", "breaker",
		"outlier_ejected", "outlier_unejected", "denied", "svid_rotated", "discovery_update", "discovery_update",
		"xds_update", "xds_update", "unsupported_field"}
	if diff := cmp.Diff(wantKinds, kinds); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func label(s attribute.Set) string {
	var parts []string
	for _, kv := range s.ToSlice() {
		parts = append(parts, string(kv.Key)+"="+kv.Value.Emit())
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func TestNilRecorderRecordsNothing(t *testing.T) {
	var m *meshtel.Recorder
	m.RecordRetry("t", "m", "")
	m.AuthzDenied("r", "c", "m")
	m.XDSUpdate("s", "t", "v", true, "")
	m.OnEvent(func(meshtel.Event) { t.Error("event on a nil *Recorder") })()
}
