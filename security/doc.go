// Package security gives a service its identity and decides who may call
// what.
//
// Identities are X.509-SVIDs with their trust bundles, from a Source: the
// SPIFFE Workload API of a SPIRE agent or `meshd dev`
// (NewWorkloadAPISource), files on disk (NewFileSource), Consul's Connect
// CA (NewConsulSource), or an in-process development CA (NewDevCA). Every
// source has Close, so code that picks one at run time closes it through
// the Source interface.
//
// Authorization is an Authorizer, a func that decides on a Call: the
// caller's verified SPIFFE ID and the gRPC method, or the HTTP method, Host
// and normalized path. Rules builds one from gRPC rules and HTTPRules from
// HTTP rules, both from Allow and Refuse with a spiffeid.Matcher for the
// callers (go-spiffe's MatchID, MatchOneOf, MatchMemberOf, MatchAny, or
// PathPrefix here); both validate every rule and are default-deny. A
// handler reads its caller with PeerID. PathPolicy says how request paths
// are normalized before HTTP rules match them.
//
// The mesh package applies all of this: mTLS on every connection, the
// Authorizer before every handler:
//
//	src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{})
//	if err != nil {
//		return err
//	}
//	defer src.Close()
//	authz, err := security.Rules(
//		security.Allow("settlement-transfers", spiffeid.MatchID(settlementID), "/gridmesh.examples.rec.Registry/Transfer"),
//		security.Allow("readers", spiffeid.MatchMemberOf(td), "/gridmesh.examples.rec.Registry/*"),
//	)
//	if err != nil {
//		return err
//	}
//	srv, err := mesh.NewServer(mesh.WithIdentity(src), mesh.WithAuthorizer(authz))
//
// Everything here is safe for concurrent use.
package security
