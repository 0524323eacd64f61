package security

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path"
	"slices"
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
	// Path is the normalized HTTP path (PathPolicy.Normalize) for HTTP
	// calls; empty for gRPC.
	Path string
	// Host is the HTTP request's Host, lower-case, without a trailing dot
	// on the name, with its port when it had one; empty for gRPC.
	Host string
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

// Deny returns the *DeniedError for call, decided by rule. Custom
// Authorizers return it to refuse a call.
func Deny(call Call, rule string) error {
	return &DeniedError{Caller: call.Caller, Target: call.target(), Rule: rule}
}

// PathPrefix returns a spiffeid.Matcher for the IDs in prefix's trust
// domain whose path is prefix's path or lies under it on a segment
// boundary: spiffe://td/ns/prod matches spiffe://td/ns/prod/trading but not
// spiffe://td/ns/production. go-spiffe's spiffeid package has the other
// matchers a Rule takes (MatchID, MatchOneOf, MatchMemberOf, MatchAny).
//
// A refusal's error names the prefix, not the refused ID, so that asking
// costs no allocation.
func PathPrefix(prefix spiffeid.ID) spiffeid.Matcher {
	td := prefix.TrustDomain()
	p := strings.TrimSuffix(prefix.Path(), "/")
	notMember := fmt.Errorf("not a member of trust domain %q", td)
	notUnder := fmt.Errorf("neither %s nor under it", prefix)
	return func(id spiffeid.ID) error {
		if !id.MemberOf(td) {
			return notMember
		}
		if id.Path() != p && !strings.HasPrefix(id.Path(), p+"/") {
			return notUnder
		}
		return nil
	}
}

// Rule is one authorization rule: callers that its matcher accepts, making
// a call that matches one of its patterns, are allowed (Allow) or refused
// (Refuse). The matcher is asked only about calls the patterns match; for
// many callers of the same methods, one rule with spiffeid.MatchOneOf is
// cheaper than a rule per caller (go-spiffe's matchers build an error for
// every ID they refuse). Rules reads the patterns as gRPC methods, HTTPRules as HTTP
// method, host and path patterns; both check them when they build the
// Authorizer. The zero Rule is invalid.
type Rule struct {
	name     string
	deny     bool
	callers  spiffeid.Matcher
	patterns []string
}

// Allow returns a rule that lets callers make calls matching patterns (none:
// every call). name identifies the rule in denials and on the admin
// endpoint; callers is a spiffeid.Matcher such as spiffeid.MatchID(id),
// spiffeid.MatchMemberOf(td), PathPrefix(id) or spiffeid.MatchAny().
func Allow(name string, callers spiffeid.Matcher, patterns ...string) Rule {
	return Rule{name: name, callers: callers, patterns: patterns}
}

// Refuse returns a rule that refuses callers' calls matching patterns (none:
// every call), whatever any allow rule says.
func Refuse(name string, callers spiffeid.Matcher, patterns ...string) Rule {
	return Rule{name: name, deny: true, callers: callers, patterns: patterns}
}

// Rules returns a default-deny Authorizer over gRPC rules: a call matching
// any Refuse rule is refused; otherwise a call matching an Allow rule
// proceeds; anything else is refused as "default deny".
//
// A pattern is a full gRPC method ("/pkg.Service/Method"), a whole service
// ("/pkg.Service/*"), or "*" for every method; a rule without patterns
// matches every call. Every rule needs a name of its own and a matcher;
// Rules returns an error naming each rule (by index and name) and field
// that is wrong and what to write instead. The Authorizer is safe for
// concurrent use.
func Rules(rules ...Rule) (Authorizer, error) {
	compiled, err := compile("Rules", rules, parseMethodPattern)
	if err != nil {
		return nil, err
	}
	return decide(compiled), nil
}

// matchFunc reports whether a pattern matches a call.
type matchFunc func(call Call) bool

// compiledRule is a validated Rule with its patterns parsed.
type compiledRule struct {
	Rule
	matchers []matchFunc
}

// matches asks the callers matcher last, only about calls the patterns
// match: go-spiffe's matchers build an error for every ID they refuse,
// which a rule set of many rules would otherwise pay on every call.
func (r *compiledRule) matches(call Call) bool {
	if len(r.matchers) > 0 && !slices.ContainsFunc(r.matchers, func(m matchFunc) bool { return m(call) }) {
		return false
	}
	return r.callers(call.Caller) == nil
}

// compile validates rules for the constructor named ctor, parsing each
// pattern with parse, and returns an error naming every bad field.
func compile(ctor string, rules []Rule, parse func(string) (matchFunc, error)) ([]compiledRule, error) {
	var errs []error
	bad := func(i int, r Rule, format string, args ...any) {
		errs = append(errs, fmt.Errorf("security: %s: rule %d (%q): %s", ctor, i, r.name, fmt.Sprintf(format, args...)))
	}
	out := make([]compiledRule, 0, len(rules))
	seen := map[string]int{}
	for i, r := range rules {
		switch prev, dup := seen[r.name]; {
		case r.name == "":
			bad(i, r, "name is empty: give every rule a name (security.Allow(\"readers\", ...)); denials and the admin endpoint show it")
		case dup:
			bad(i, r, "name is also rule %d's: give each rule its own name, so a denial says which one decided", prev)
		default:
			seen[r.name] = i
		}
		if r.callers == nil {
			bad(i, r, "callers is nil: pass a spiffeid.Matcher such as spiffeid.MatchID(id), spiffeid.MatchMemberOf(td), security.PathPrefix(id) or spiffeid.MatchAny()")
		}
		c := compiledRule{Rule: r}
		for _, p := range r.patterns {
			m, err := parse(p)
			if err != nil {
				bad(i, r, "%v", err)
				continue
			}
			c.matchers = append(c.matchers, m)
		}
		out = append(out, c)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// decide is the default-deny Authorizer over compiled rules: a matching
// Refuse rule wins over any Allow rule.
func decide(rules []compiledRule) Authorizer {
	return func(_ context.Context, call Call) error {
		for i := range rules {
			if r := &rules[i]; r.deny && r.matches(call) {
				return Deny(call, "rule "+r.name)
			}
		}
		for i := range rules {
			if r := &rules[i]; !r.deny && r.matches(call) {
				return nil
			}
		}
		return Deny(call, "default deny")
	}
}

// parseMethodPattern parses a gRPC method pattern of Rules.
func parseMethodPattern(pattern string) (matchFunc, error) {
	if pattern == "*" {
		return func(Call) bool { return true }, nil
	}
	svc, m, ok := strings.Cut(strings.TrimPrefix(pattern, "/"), "/")
	if !strings.HasPrefix(pattern, "/") || !ok || svc == "" || m == "" || strings.Contains(m, "/") || (strings.Contains(m, "*") && m != "*") {
		return nil, fmt.Errorf("method %q: want \"/package.Service/Method\", \"/package.Service/*\" or \"*\"", pattern)
	}
	if _, err := path.Match(svc, ""); err != nil {
		return nil, fmt.Errorf("method %q: %w", pattern, err)
	}
	if m == "*" {
		prefix := strings.TrimSuffix(pattern, "*")
		return func(c Call) bool { return strings.HasPrefix(c.Method, prefix) }, nil
	}
	return func(c Call) bool { return c.Method == pattern }, nil
}
