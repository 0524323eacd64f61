package security

import (
	"context"
	"fmt"
	"net/http"
	"path"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Call is what an Authorizer decides on: who is calling and what they call.
type Call struct {
	// Caller is the SPIFFE ID from the caller's verified X.509-SVID.
	Caller spiffeid.ID
	// Method is the full gRPC method ("/pkg.Service/Method"), or the HTTP
	// method ("GET", "POST", ...) for HTTP calls.
	Method string
	// Path is the normalized HTTP path for HTTP calls; empty for gRPC.
	Path string
	// Header is the HTTP request's header for HTTP calls (read only; nil
	// for gRPC, whose metadata is in the context). The identity headers
	// the mesh drops are gone from it.
	Header http.Header
}

// target names what was called, for error messages.
func (c Call) target() string {
	if c.Path != "" {
		return c.Method + " " + c.Path
	}
	return c.Method
}

// Authorizer decides whether a call may proceed. It returns nil to allow and
// a *DeniedError to deny. Authorizers must be safe for concurrent use.
type Authorizer func(ctx context.Context, call Call) error

// DeniedError says that a call was refused and which rule decided.
// The mesh maps it to PERMISSION_DENIED (gRPC) or 403 (HTTP).
type DeniedError struct {
	Caller spiffeid.ID
	Target string // the gRPC method, or "METHOD /path" for HTTP
	Rule   string // the rule that decided, or "default deny"
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("%s may not call %s (decided by %s)", e.Caller, e.Target, e.Rule)
}

// Deny returns the *DeniedError for call, decided by rule.
func Deny(call Call, rule string) error {
	return &DeniedError{Caller: call.Caller, Target: call.target(), Rule: rule}
}

// IDMatcher reports whether a caller's SPIFFE ID matches.
type IDMatcher func(id spiffeid.ID) bool

// AnyID matches every authenticated caller.
func AnyID() IDMatcher { return func(spiffeid.ID) bool { return true } }

// ExactID matches the given IDs exactly.
func ExactID(ids ...spiffeid.ID) IDMatcher {
	return func(id spiffeid.ID) bool {
		for _, want := range ids {
			if id == want {
				return true
			}
		}
		return false
	}
}

// MemberOf matches every ID in the trust domain td.
func MemberOf(td spiffeid.TrustDomain) IDMatcher {
	return func(id spiffeid.ID) bool { return id.MemberOf(td) }
}

// PathPrefix matches IDs in prefix's trust domain whose path is prefix's path
// or lies under it on a segment boundary: spiffe://td/ns/prod matches
// spiffe://td/ns/prod/trading but not spiffe://td/ns/production.
func PathPrefix(prefix spiffeid.ID) IDMatcher {
	p := strings.TrimSuffix(prefix.Path(), "/")
	return func(id spiffeid.ID) bool {
		if !id.MemberOf(prefix.TrustDomain()) {
			return false
		}
		return id.Path() == p || strings.HasPrefix(id.Path(), p+"/")
	}
}

// Action says what a matching rule does.
type Action int

const (
	// ActionAllow lets a matching call through.
	ActionAllow Action = iota
	// ActionDeny refuses a matching call, whatever any allow rule says.
	ActionDeny
)

func (a Action) String() string {
	if a == ActionDeny {
		return "deny"
	}
	return "allow"
}

// Rule is one authorization rule: callers matching Callers that call a
// method matching one of Methods get Action.
type Rule struct {
	// Name identifies the rule in denial messages and on the admin endpoint.
	Name    string
	Action  Action
	Callers IDMatcher
	// Methods are full gRPC methods ("/pkg.Service/Method"), a whole service
	// ("/pkg.Service/*"), or "*" for every method. Empty means every method.
	// For HTTP calls see HTTPRule.
	Methods []string
}

// Allow returns a rule that lets callers call methods ("*" or none: all).
func Allow(name string, callers IDMatcher, methods ...string) Rule {
	return Rule{Name: name, Action: ActionAllow, Callers: callers, Methods: methods}
}

// Refuse returns a rule that refuses callers calling methods.
func Refuse(name string, callers IDMatcher, methods ...string) Rule {
	return Rule{Name: name, Action: ActionDeny, Callers: callers, Methods: methods}
}

func (r Rule) matches(call Call) bool {
	if r.Callers == nil || !r.Callers(call.Caller) {
		return false
	}
	if len(r.Methods) == 0 {
		return true
	}
	for _, m := range r.Methods {
		if methodMatches(m, call.Method) {
			return true
		}
	}
	return false
}

func methodMatches(pattern, method string) bool {
	switch {
	case pattern == "*":
		return true
	case strings.HasSuffix(pattern, "/*"):
		return strings.HasPrefix(method, strings.TrimSuffix(pattern, "*"))
	default:
		return pattern == method
	}
}

// ValidateMethodPattern reports whether pattern is a method form a Rule
// accepts, with an error that says the expected form.
func ValidateMethodPattern(pattern string) error {
	if pattern == "*" {
		return nil
	}
	svc, m, ok := strings.Cut(strings.TrimPrefix(pattern, "/"), "/")
	if !strings.HasPrefix(pattern, "/") || !ok || svc == "" || m == "" || strings.Contains(m, "/") || (strings.Contains(m, "*") && m != "*") {
		return fmt.Errorf("method %q: want \"/package.Service/Method\", \"/package.Service/*\" or \"*\"", pattern)
	}
	if _, err := path.Match(svc, ""); err != nil {
		return fmt.Errorf("method %q: %w", pattern, err)
	}
	return nil
}

// Rules returns a default-deny Authorizer over rules: a call matching any
// deny rule is refused; otherwise a call matching an allow rule proceeds;
// anything else is refused as "default deny".
func Rules(rules ...Rule) Authorizer {
	rules = append([]Rule(nil), rules...)
	return func(_ context.Context, call Call) error {
		for _, r := range rules {
			if r.Action == ActionDeny && r.matches(call) {
				return Deny(call, "rule "+r.Name)
			}
		}
		for _, r := range rules {
			if r.Action == ActionAllow && r.matches(call) {
				return nil
			}
		}
		return Deny(call, "default deny")
	}
}

// AllowAll allows every authenticated caller. It is what a server does when
// it is given no Authorizer.
func AllowAll() Authorizer {
	return func(context.Context, Call) error { return nil }
}

// AllOf allows a call only when every authorizer allows it; the first denial
// is returned.
func AllOf(authz ...Authorizer) Authorizer {
	return func(ctx context.Context, call Call) error {
		for _, a := range authz {
			if err := a(ctx, call); err != nil {
				return err
			}
		}
		return nil
	}
}

// AnyOf allows a call when at least one authorizer allows it; when all deny,
// the last denial is returned. With no authorizers it denies.
func AnyOf(authz ...Authorizer) Authorizer {
	return func(ctx context.Context, call Call) error {
		err := Deny(call, "default deny")
		for _, a := range authz {
			if err = a(ctx, call); err == nil {
				return nil
			}
		}
		return err
	}
}
