package security_test

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/security"
)

// The rules of the package doc, asked about three calls.
func ExampleRules() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	settlementID := spiffeid.RequireFromPath(td, "/settlement")
	authz, err := security.Rules(
		security.Allow("settlement-transfers", spiffeid.MatchID(settlementID), "/gridmesh.examples.rec.Registry/Transfer"),
		security.Allow("readers", spiffeid.MatchMemberOf(td), "/gridmesh.examples.rec.Registry/*"),
		security.Refuse("no-interns", security.PathPrefix(spiffeid.RequireFromPath(td, "/interns"))),
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, c := range []security.Call{
		{Caller: settlementID, Method: "/gridmesh.examples.rec.Registry/Transfer"},
		{Caller: spiffeid.RequireFromPath(td, "/gateway"), Method: "/gridmesh.examples.rec.Accounts/Debit"},
		{Caller: spiffeid.RequireFromPath(td, "/interns/bob"), Method: "/gridmesh.examples.rec.Registry/List"},
	} {
		if err := authz(context.Background(), c); err != nil {
			fmt.Println(err)
		} else {
			fmt.Println(c.Caller, "may call", c.Method)
		}
	}
	// Output:
	// spiffe://example.org/settlement may call /gridmesh.examples.rec.Registry/Transfer
	// spiffe://example.org/gateway may not call /gridmesh.examples.rec.Accounts/Debit (decided by default deny)
	// spiffe://example.org/interns/bob may not call /gridmesh.examples.rec.Registry/List (decided by rule no-interns)
}

// HTTPRules takes the same rules, with HTTP patterns, and says which rule
// is wrong and how when one is.
func ExampleHTTPRules() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	_, err := security.HTTPRules(
		security.Allow("reads", spiffeid.MatchMemberOf(td), "GET /v1/trades/*"),
		security.Allow("orders", nil, "post /v1/orders"),
	)
	fmt.Println(err)
	// Output:
	// security: HTTPRules: rule 1 ("orders"): callers is nil: pass a spiffeid.Matcher such as spiffeid.MatchID(id), spiffeid.MatchMemberOf(td), security.PathPrefix(id) or spiffeid.MatchAny()
	// security: HTTPRules: rule 1 ("orders"): pattern "post /v1/orders": method "post": want an upper-case HTTP method such as GET
}
