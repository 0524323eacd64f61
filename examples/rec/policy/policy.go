// Package policy is the REC platform's authorization matrix: which workload
// may call which method of which service. The services build their
// authorizers from it and the tests sweep every pair it leaves out, so the
// matrix below is both the documentation and the enforced policy.
//
//	method                      gateway trading settlement operator
//	Registry/Issue                                              x
//	Registry/Hold                          x
//	Registry/Release                       x       x
//	Registry/Transfer                              x
//	Registry/Retire                x
//	Registry/Holdings              x                            x
//	Registry/ListHolds                     x                    x
//	Registry/Totals                                             x
//	Accounts/Open                                               x
//	Accounts/Hold                          x
//	Accounts/Release                       x       x
//	Accounts/Capture                               x
//	Accounts/Balance               x                            x
//	Accounts/ListHolds                     x                    x
//	Accounts/Totals                                             x
//	Trading/PlaceOrder             x
//	Trading/CancelOrder            x
//	Trading/GetOrder               x                            x
//	Trading/Book                   x                            x
//	Trading/Trades                 x                            x
//	Trading/Events                                 x            x
//	Trading/Stats                                               x
//	Settlement/GetTrade            x                            x
//	Settlement/Stats                                            x
//
// The registry and accounts workloads call nobody, so they appear in no
// column: every call they make is denied. Everything not marked is denied
// (default deny), for example the gateway may read holdings but never
// transfer them, and trading may hold cash but never capture it. (Trading
// releases only the holds of orders that never came: see the reconciler
// in package trading.)
//
// The gateway's HTTP API (served by the mesh HTTP server, so callers
// present SVIDs too) has its own matrix, GatewayRoutes:
//
//	route                                   portal operator
//	POST   /v1/orders                         x
//	GET    /v1/orders/*                       x      x
//	DELETE /v1/orders/*                       x
//	GET    /v1/markets/*/*/book               x      x
//	GET    /v1/trades                         x      x
//	GET    /v1/trades/*                       x      x
//	GET    /v1/participants/*/holdings        x      x
//	GET    /v1/participants/*/balance         x      x
//	POST   /v1/participants/*/retirements     x
//	GET    /debug/mesh                               x
//	GET    /healthz                         every workload
//
// The portal is the participants' front end (and the load generator): it
// authenticates people and names the participant in each request.
package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/security"
)

// Workload names, the last path segment of their SPIFFE IDs
// (spiffe://<trust domain>/<name>), as `meshd dev -identities` issues them.
const (
	Gateway    = "gateway"
	Trading    = "trading"
	Settlement = "settlement"
	Registry   = "registry"
	Accounts   = "accounts"
	// Operator is the platform's back office: it issues certificates, opens
	// accounts and audits the totals. The demo and the tests run as it.
	Operator = "operator"
	// Portal is the participants' front end: the only workload that may
	// trade through the gateway. recload runs as it.
	Portal = "portal"
)

// Workloads lists every workload of the platform.
var Workloads = []string{Gateway, Trading, Settlement, Registry, Accounts, Operator, Portal}

// Matrix maps each full gRPC method to the workloads allowed to call it.
// Do not modify it at run time.
var Matrix = map[string][]string{
	recpb.Registry_Issue_FullMethodName:     {Operator},
	recpb.Registry_Hold_FullMethodName:      {Trading},
	recpb.Registry_Release_FullMethodName:   {Settlement, Trading},
	recpb.Registry_Transfer_FullMethodName:  {Settlement},
	recpb.Registry_Retire_FullMethodName:    {Gateway},
	recpb.Registry_Holdings_FullMethodName:  {Gateway, Operator},
	recpb.Registry_ListHolds_FullMethodName: {Trading, Operator},
	recpb.Registry_Totals_FullMethodName:    {Operator},

	recpb.Accounts_Open_FullMethodName:      {Operator},
	recpb.Accounts_Hold_FullMethodName:      {Trading},
	recpb.Accounts_Release_FullMethodName:   {Settlement, Trading},
	recpb.Accounts_Capture_FullMethodName:   {Settlement},
	recpb.Accounts_Balance_FullMethodName:   {Gateway, Operator},
	recpb.Accounts_ListHolds_FullMethodName: {Trading, Operator},
	recpb.Accounts_Totals_FullMethodName:    {Operator},

	recpb.Trading_PlaceOrder_FullMethodName:  {Gateway},
	recpb.Trading_CancelOrder_FullMethodName: {Gateway},
	recpb.Trading_GetOrder_FullMethodName:    {Gateway, Operator},
	recpb.Trading_Book_FullMethodName:        {Gateway, Operator},
	recpb.Trading_Trades_FullMethodName:      {Gateway, Operator},
	recpb.Trading_Events_FullMethodName:      {Settlement, Operator},
	recpb.Trading_Stats_FullMethodName:       {Operator},

	recpb.Settlement_GetTrade_FullMethodName: {Gateway, Operator},
	recpb.Settlement_Stats_FullMethodName:    {Operator},
}

// Services are the platform's gRPC services, by the workload that serves
// each.
var Services = map[string]*grpc.ServiceDesc{
	Registry:   &recpb.Registry_ServiceDesc,
	Accounts:   &recpb.Accounts_ServiceDesc,
	Trading:    &recpb.Trading_ServiceDesc,
	Settlement: &recpb.Settlement_ServiceDesc,
}

// ID returns the SPIFFE ID of workload name in trust domain td.
func ID(td spiffeid.TrustDomain, name string) spiffeid.ID {
	id, err := spiffeid.FromSegments(td, name)
	if err != nil {
		panic(fmt.Sprintf("policy: workload name %q: %v", name, err))
	}
	return id
}

// Methods returns the full method names of desc, sorted.
func Methods(desc *grpc.ServiceDesc) []string {
	var ms []string
	for _, m := range desc.Methods {
		ms = append(ms, "/"+desc.ServiceName+"/"+m.MethodName)
	}
	for _, s := range desc.Streams {
		ms = append(ms, "/"+desc.ServiceName+"/"+s.StreamName)
	}
	slices.Sort(ms)
	return ms
}

// Allowed reports whether workload caller may call method.
func Allowed(caller, method string) bool {
	return slices.Contains(Matrix[method], caller)
}

// Authorizer returns the default-deny authorizer for the service desc in
// trust domain td: one allow rule per method of the matrix, for its
// callers.
func Authorizer(td spiffeid.TrustDomain, desc *grpc.ServiceDesc) (security.Authorizer, error) {
	var rules []security.Rule
	for _, m := range Methods(desc) {
		if len(Matrix[m]) > 0 {
			rules = append(rules, security.Allow("callers of "+m, spiffeid.MatchOneOf(ids(td, Matrix[m])...), m))
		}
	}
	return security.Rules(rules...)
}

// ids returns the SPIFFE IDs of workloads in td.
func ids(td spiffeid.TrustDomain, workloads []string) []spiffeid.ID {
	out := make([]spiffeid.ID, len(workloads))
	for i, w := range workloads {
		out[i] = ID(td, w)
	}
	return out
}

// HTTPRoute is one route of the gateway's API and who may call it.
type HTTPRoute struct {
	// Pattern is the security.Rule pattern.
	Pattern string
	// Example is a concrete request matching Pattern ("GET /v1/trades/t1"),
	// for the tests' sweep.
	Example string
	// Callers may call it; nil means every workload.
	Callers []string
}

// GatewayRoutes is the gateway's HTTP authorization matrix.
var GatewayRoutes = []HTTPRoute{
	{"POST /v1/orders", "POST /v1/orders", []string{Portal}},
	{"GET /v1/orders/*", "GET /v1/orders/o-none", []string{Portal, Operator}},
	{"DELETE /v1/orders/*", "DELETE /v1/orders/o-none", []string{Portal}},
	{"GET /v1/markets/*/*/book", "GET /v1/markets/solar/2024/book", []string{Portal, Operator}},
	{"GET /v1/trades", "GET /v1/trades", []string{Portal, Operator}},
	{"GET /v1/trades/*", "GET /v1/trades/t-none", []string{Portal, Operator}},
	{"GET /v1/participants/*/holdings", "GET /v1/participants/p01/holdings", []string{Portal, Operator}},
	{"GET /v1/participants/*/balance", "GET /v1/participants/p01/balance", []string{Portal, Operator}},
	{"POST /v1/participants/*/retirements", "POST /v1/participants/p01/retirements", []string{Portal}},
	{"GET /debug/mesh", "GET /debug/mesh", []string{Operator}},
	{"GET /healthz", "GET /healthz", nil},
}

// HTTPAllowed reports whether workload caller may make the request of
// route r.
func (r HTTPRoute) HTTPAllowed(caller string) bool {
	return r.Callers == nil || slices.Contains(r.Callers, caller)
}

// GatewayAuthorizer returns the default-deny authorizer of the gateway's
// HTTP API in trust domain td.
func GatewayAuthorizer(td spiffeid.TrustDomain) (security.Authorizer, error) {
	var rules []security.Rule
	for _, r := range GatewayRoutes {
		if r.Callers == nil {
			rules = append(rules, security.Allow("anyone calls "+r.Pattern, spiffeid.MatchMemberOf(td), r.Pattern))
			continue
		}
		rules = append(rules, security.Allow("callers of "+r.Pattern, spiffeid.MatchOneOf(ids(td, r.Callers)...), r.Pattern))
	}
	return security.HTTPRules(rules...)
}

// MeshdConfig returns the meshd config (YAML) for running the platform on
// xDS: mTLS through meshd's certificate provider, the trading service
// balanced by ring hash on hashHeader, and the matrix above as each
// service's authorization policies (meshd's RBAC, default deny). Servers
// register their endpoints with meshd themselves.
func MeshdConfig(td spiffeid.TrustDomain, hashHeader string) string {
	var b strings.Builder
	b.WriteString("# Generated by examples/rec/policy.MeshdConfig from the authorization matrix.\nmtls: true\nservices:\n")
	for _, svc := range []string{Registry, Accounts, Trading, Settlement} {
		fmt.Fprintf(&b, "  - name: %s\n", svc)
		if svc == Trading {
			fmt.Fprintf(&b, "    lb: ring_hash\n    hash_header: %s\n", hashHeader)
		}
		b.WriteString("    authorization:\n")
		for _, m := range Methods(Services[svc]) {
			var ids []string
			for _, c := range Matrix[m] {
				ids = append(ids, fmt.Sprintf("%q", ID(td, c).String()))
			}
			fmt.Fprintf(&b, "      - name: %q\n        sources: [%s]\n        methods: [%q]\n", m, strings.Join(ids, ", "), m)
		}
	}
	return b.String()
}
