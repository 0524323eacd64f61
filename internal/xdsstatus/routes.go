package xdsstatus

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	rbacpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/gridmesh/gridmesh/internal/xdsresource"
)

// Route is one route of an accepted route configuration, described for
// people: what it matches and what grpc-go does with a matching call.
type Route struct {
	Config string // route configuration name
	Name   string // the route's name, "" when it has none
	Match  string // "prefix /", "path /pkg.S/M", plus header matchers
	// Action is where calls go and the policy on the way: "trading/v1
	// 90%, trading/v2 10%; timeout 2s; retry up to 3 attempts on
	// unavailable; abort 50% with Unavailable".
	Action string
	// Unreachable says an earlier route of the same virtual host matches
	// every call, so no call takes this one.
	Unreachable bool
}

// Routes returns the routes of the route configurations the client
// accepted, in the order grpc-go matches them within each configuration.
func (r *Recorder) Routes() []Route {
	configs := r.Accepted(RouteType)
	slices.SortFunc(configs, func(a, b proto.Message) int {
		return strings.Compare(a.(*routepb.RouteConfiguration).GetName(), b.(*routepb.RouteConfiguration).GetName())
	})
	var out []Route
	for _, m := range configs {
		rc := m.(*routepb.RouteConfiguration)
		for _, vh := range rc.GetVirtualHosts() {
			caught := false
			for _, rt := range vh.GetRoutes() {
				out = append(out, Route{Config: rc.GetName(), Name: rt.GetName(), Match: describeMatch(rt.GetMatch()),
					Action: describeAction(rt), Unreachable: caught})
				caught = caught || xdsresource.CatchAll(rt.GetMatch())
			}
		}
	}
	return out
}

func describeMatch(m *routepb.RouteMatch) string {
	var parts []string
	switch {
	case m.GetPath() != "":
		parts = append(parts, "path "+m.GetPath())
	case m.GetSafeRegex() != nil:
		parts = append(parts, "regex "+m.GetSafeRegex().GetRegex())
	default:
		parts = append(parts, "prefix "+m.GetPrefix())
	}
	for _, h := range m.GetHeaders() {
		v := "present"
		switch sm := h.GetStringMatch(); {
		case sm.GetExact() != "":
			v = "= " + sm.GetExact()
		case sm.GetPrefix() != "":
			v = "starts " + sm.GetPrefix()
		case sm.GetSafeRegex() != nil:
			v = "~ " + sm.GetSafeRegex().GetRegex()
		}
		if h.GetInvertMatch() {
			v = "not " + v
		}
		parts = append(parts, fmt.Sprintf("header %s %s", h.GetName(), v))
	}
	if f := m.GetRuntimeFraction().GetDefaultValue(); f != nil {
		parts = append(parts, fmt.Sprintf("fraction %d/%s", f.GetNumerator(), strings.ToLower(f.GetDenominator().String())))
	}
	return strings.Join(parts, ", ")
}

func describeAction(rt *routepb.Route) string {
	var parts []string
	a := rt.GetRoute()
	switch {
	case rt.GetNonForwardingAction() != nil:
		parts = append(parts, "non-forwarding")
	case a == nil:
		parts = append(parts, "no route action: calls fail with UNAVAILABLE")
	case a.GetWeightedClusters() != nil:
		var total uint32
		for _, c := range a.GetWeightedClusters().GetClusters() {
			total += c.GetWeight().GetValue()
		}
		var ws []string
		for _, c := range a.GetWeightedClusters().GetClusters() {
			ws = append(ws, fmt.Sprintf("%s %.0f%%", c.GetName(), 100*float64(c.GetWeight().GetValue())/float64(max(total, 1))))
		}
		parts = append(parts, strings.Join(ws, ", "))
	default:
		parts = append(parts, a.GetCluster())
	}
	if d := a.GetMaxStreamDuration().GetGrpcTimeoutHeaderMax(); d != nil {
		parts = append(parts, "deadline capped at "+d.AsDuration().String())
	}
	if d := a.GetMaxStreamDuration().GetMaxStreamDuration(); d != nil {
		parts = append(parts, "timeout "+d.AsDuration().String())
	}
	if p := a.GetRetryPolicy(); p != nil {
		parts = append(parts, xdsresource.RetrySummary(p))
	}
	filters := rt.GetTypedPerFilterConfig()
	for _, name := range slices.Sorted(maps.Keys(filters)) {
		cfg := filters[name]
		f := &faultpb.HTTPFault{}
		if cfg.UnmarshalTo(f) != nil {
			parts = append(parts, "filter "+name)
			continue
		}
		if d := f.GetDelay(); d != nil {
			parts = append(parts, fmt.Sprintf("delay %s for %s", d.GetFixedDelay().AsDuration(), xdsresource.Percent(d.GetPercentage())))
		}
		if ab := f.GetAbort(); ab != nil {
			parts = append(parts, fmt.Sprintf("abort %s with %s", xdsresource.Percent(ab.GetPercentage()), codes.Code(ab.GetGrpcStatus())))
		}
	}
	return strings.Join(parts, "; ")
}

// ServerRBAC describes the RBAC of the server listeners the client
// accepted, one line per listener filter chain that has it: "ALLOW
// gateway-only, ops" (named policies) or "DENY ...". Empty when none has
// RBAC: grpc-go then lets every caller the mTLS accepts through.
func (r *Recorder) ServerRBAC() []string {
	var out []string
	for _, m := range r.Accepted(ListenerType) {
		l := m.(*listenerpb.Listener)
		chains := append(slices.Clone(l.GetFilterChains()), l.GetDefaultFilterChain())
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				hcm := &hcmpb.HttpConnectionManager{}
				if f.GetTypedConfig().UnmarshalTo(hcm) != nil {
					continue
				}
				for _, hf := range hcm.GetHttpFilters() {
					rb := &rbacpb.RBAC{}
					if hf.GetTypedConfig().UnmarshalTo(rb) != nil || rb.GetRules() == nil {
						continue
					}
					names := slices.Sorted(maps.Keys(rb.GetRules().GetPolicies()))
					line := rb.GetRules().GetAction().String() + " " + strings.Join(names, ", ")
					if len(names) == 0 {
						line = rb.GetRules().GetAction().String() + " (no policies)"
					}
					if !slices.Contains(out, line) {
						out = append(out, line)
					}
				}
			}
		}
	}
	return out
}
