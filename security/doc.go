// Package security gives the mesh its identities and decides who may call
// what.
//
// Identities are X.509-SVIDs with their trust bundles, from a Source: the
// SPIFFE Workload API of a SPIRE agent (NewWorkloadAPISource), files on disk
// (NewFileSource), or a development CA (NewDevCA). Authorization is an
// Authorizer, a func built from rules that match the caller's SPIFFE ID and
// the gRPC method (Rules) or the HTTP method, Host and normalized path
// (HTTPRules). Once rules are given, a call that no rule allows is refused.
//
//	src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{})
//	if err != nil {
//		return err
//	}
//	defer src.Close()
//	authz := security.Rules(
//		security.Allow("settlement-transfers", security.ExactID(settlementID), "/gridmesh.examples.rec.Registry/Transfer"),
//		security.Allow("readers", security.MemberOf(td), "/gridmesh.examples.rec.Registry/*"),
//	)
//	srv, err := mesh.NewServer(mesh.WithIdentity(src), mesh.WithAuthorizer(authz))
//
// Everything here is safe for concurrent use.
package security
