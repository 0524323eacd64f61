package mesh

import "github.com/gridmesh/gridmesh/security"

// WithHTTPPathPolicy sets how NewHTTPServer treats request paths that the
// code behind the authorization check (the handler, a framework, a backend
// the request is forwarded to) could read differently from the check:
// path parameters (";"), encoded "%", "?" and "#" (double encoding), and
// Unicode that NFKC changes. Default: security.PathStrict, which refuses
// all three with 400, so that the path the rules judged is a fixed point
// of one more percent-decode and of NFKC. Flags relax one class each:
//
//	mesh.WithHTTPPathPolicy(security.PathAllowParameters)            // ";" is an ordinary character
//	mesh.WithHTTPPathPolicy(security.PathAllowEncodedDelimiters)     // keep %25, %3F, %23 as data
//	mesh.WithHTTPPathPolicy(security.PathNormalizeUnicode)           // apply NFKC instead of refusing
//	mesh.WithHTTPPathPolicy(security.PathAllowParameters | security.PathNormalizeUnicode)
//
// What no policy can make safe is refused whatever the policy: encoded
// slashes and backslashes, NUL and control characters, invalid UTF-8
// (overlong "." and "/" included), Unicode that NFKC turns into a
// separator or delimiter, and "..;". See security.PathPolicy. NewHTTPServer
// returns an error for a policy with unknown flags, and NewServer (gRPC)
// one for this option.
func WithHTTPPathPolicy(p security.PathPolicy) ServerOption {
	return serverOnly("WithHTTPPathPolicy", forNewHTTPServer, func(c *serverConfig) { c.http.paths = p })
}
