package discovery

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/metadata"

	"github.com/gridmesh/gridmesh/internal/consulwatch"
)

// IntentionDefault says what applies to callers no intention matches.
type IntentionDefault string

const (
	// DefaultFromConsul (the zero value) applies Consul's own default
	// intention behaviour, which Consul 1.14 takes from the ACL system:
	// allow with ACLs off (as in `consul agent -dev`), the ACL
	// default_policy with ACLs on (for every token, the management token
	// included). The watch asks Consul (/v1/connect/intentions/check for
	// a caller no intention names) whenever the intentions change; the
	// Registry's token needs service:read on the service.
	DefaultFromConsul IntentionDefault = ""
	// DefaultAllow allows callers no intention matches.
	DefaultAllow IntentionDefault = "allow"
	// DefaultDeny denies callers no intention matches.
	DefaultDeny IntentionDefault = "deny"
)

// IntentionsConfig says whose intentions to watch and what applies when
// none matches.
type IntentionsConfig struct {
	// Service is the destination service: the server's own Consul name.
	// Required.
	Service string
	// Default applies to callers no intention matches, and to callers an
	// L7 intention matches but none of its permissions does (Consul's
	// rule). Default DefaultFromConsul.
	Default IntentionDefault
	// SourceName maps a caller's SPIFFE ID to the Consul service name that
	// intentions name. Default: ServiceName, for callers in
	// Config.TrustDomain only when that is set (a federated trust domain's
	// "web" is not this one's). A caller it maps to nothing matches only
	// wildcard ("*") intentions.
	SourceName func(spiffeid.ID) (string, bool)
}

// Intentions enforces the Consul intentions whose destination is one
// service, L4 (allow/deny) and L7 (service-intentions config entries with
// HTTP permissions). Create it with Registry.WatchIntentions. Its methods
// are safe for concurrent use.
type Intentions struct {
	cfg    IntentionsConfig
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	mu           sync.RWMutex
	rules        []*intention // sorted by precedence, highest first
	loaded       bool
	defaultAllow bool
	defaultFrom  string // what decided the default, for denial messages
}

// intention is a Consul intention with its permissions compiled.
type intention struct {
	*api.Intention
	desc  string
	perms []permission
}

// permission is an L7 permission with its regular expressions compiled.
type permission struct {
	*api.IntentionPermission
	desc    string
	path    *regexp.Regexp
	headers []*regexp.Regexp // per HTTP.Header entry; nil when it has no Regex
	invalid string           // why it cannot be evaluated ("" when it can)
}

// WatchIntentions loads the intentions whose destination is cfg.Service
// (exact or "*") and follows their changes with a blocking query on
// /v1/connect/intentions/match, which Consul answers as soon as an
// intention or a service-intentions config entry changes, so a change
// applies to new calls within a second. It blocks until the first load
// (and, with DefaultFromConsul, Consul's default) or until ctx ends, and
// fails then with the last error. While Consul is unreachable afterwards,
// the last loaded intentions stay in force.
func (r *Registry) WatchIntentions(ctx context.Context, cfg IntentionsConfig) (*Intentions, error) {
	if r.cfg.Consul == nil {
		return nil, fmt.Errorf("%w: WatchIntentions %q", ErrNoConsul, cfg.Service)
	}
	if cfg.Service == "" || cfg.Service == "*" {
		return nil, fmt.Errorf("discovery: IntentionsConfig.Service %q: want the server's own service name", cfg.Service)
	}
	switch cfg.Default {
	case DefaultFromConsul, DefaultAllow, DefaultDeny:
	default:
		return nil, fmt.Errorf("discovery: IntentionsConfig.Default %q: want \"\" (Consul's default), %q or %q", cfg.Default, DefaultAllow, DefaultDeny)
	}
	if cfg.SourceName == nil {
		cfg.SourceName = ServiceName
		if td := r.cfg.TrustDomain; !td.IsZero() {
			cfg.SourceName = func(id spiffeid.ID) (string, bool) {
				if !id.MemberOf(td) {
					return "", false
				}
				return ServiceName(id)
			}
		}
	}
	wctx, cancel := context.WithCancel(context.Background())
	in := &Intentions{cfg: cfg, cancel: cancel, done: make(chan struct{})}
	switch cfg.Default {
	case DefaultAllow:
		in.defaultAllow, in.defaultFrom = true, "IntentionsConfig.Default"
	case DefaultDeny:
		in.defaultFrom = "IntentionsConfig.Default"
	}
	first := make(chan struct{})
	var once sync.Once
	var lastErr error
	var errMu sync.Mutex
	connect := r.cfg.Consul.Connect()
	fetch := func(ctx context.Context, index uint64) (uint64, error) {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: r.cfg.WaitTime}).WithContext(ctx)
		m, meta, err := connect.IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{cfg.Service}}, q)
		if err != nil {
			return 0, fmt.Errorf("discovery: consul intentions for %q: %w", cfg.Service, err)
		}
		raw := m[cfg.Service]
		in.mu.RLock()
		changed := !in.loaded || !slices.EqualFunc(in.rules, raw, func(a *intention, b *api.Intention) bool { return sameIntention(a.Intention, b) })
		in.mu.RUnlock()
		if !changed {
			return meta.LastIndex, nil
		}
		rules := make([]*intention, 0, len(raw))
		for _, ixn := range raw {
			ixn.Precedence = precedence(ixn)
			rules = append(rules, compileIntention(ixn))
		}
		// Highest precedence first; Consul's order, recomputed so the
		// decision does not rest on the answer's order.
		slices.SortStableFunc(rules, func(a, b *intention) int { return cmp.Compare(b.Precedence, a.Precedence) })
		var allow, known bool
		if cfg.Default == DefaultFromConsul {
			// Read again on every change: the default is observable only
			// while no wildcard intention decides for every caller.
			if allow, known, err = probeDefault(ctx, r.cfg.Consul, cfg.Service, rules); err != nil {
				return 0, err
			}
		}
		in.mu.Lock()
		in.rules, in.loaded = rules, true
		if known {
			in.defaultAllow, in.defaultFrom = allow, "Consul's default intention policy"
		}
		in.mu.Unlock()
		r.emit(Event{Kind: IntentionsUpdated, Target: cfg.Service, Intentions: len(rules)})
		once.Do(func() { close(first) })
		return meta.LastIndex, nil
	}
	hooks := consulwatch.Hooks{
		OnError: func(err error, attempt int, retryIn time.Duration) {
			errMu.Lock()
			lastErr = err
			errMu.Unlock()
			r.emit(Event{Kind: SourceUnreachable, Target: cfg.Service, Intentions: in.Len(), Err: err, Attempt: attempt, RetryIn: retryIn})
		},
		OnRecover: func() { r.emit(Event{Kind: SourceRecovered, Target: cfg.Service}) },
	}
	go func() {
		defer close(in.done)
		_ = consulwatch.Run(wctx, r.backoff(), fetch, hooks, nil)
	}()
	select {
	case <-first:
		return in, nil
	case <-ctx.Done():
		_ = in.Close()
		errMu.Lock()
		defer errMu.Unlock()
		if lastErr != nil {
			return nil, fmt.Errorf("discovery: intentions for %q not loaded: %w (last error: %v)", cfg.Service, ctx.Err(), lastErr)
		}
		return nil, fmt.Errorf("discovery: intentions for %q not loaded: %w", cfg.Service, ctx.Err())
	}
}

// probeSource is the made-up caller whose authorization Consul is asked
// for to learn its default: no intention names it, so when no wildcard
// intention applies either, only the default decides for it.
const probeSource = "gridmesh-default-intention-probe"

// probeDefault asks Consul how it would decide a caller that no intention
// matches (GET /v1/connect/intentions/check, which needs service:read on
// the service). Consul 1.14 has no other API for it: the default intention
// behaviour is the ACL authorizer's IntentionDefaultAllow for the
// request's token, exposed only through such decisions (this endpoint and
// /v1/agent/connect/authorize). With a wildcard-source intention in rules
// the answer is that intention's, and known is false.
func probeDefault(ctx context.Context, c *api.Client, service string, rules []*intention) (allow, known bool, err error) {
	for _, ixn := range rules {
		if ixn.SourceName == "*" {
			return false, false, nil
		}
	}
	q := (&api.QueryOptions{}).WithContext(ctx)
	allow, _, err = c.Connect().IntentionCheck(&api.IntentionCheck{Source: probeSource, Destination: service, SourceType: api.IntentionSourceConsul}, q)
	if err != nil {
		if strings.Contains(err.Error(), "403") {
			return false, false, fmt.Errorf("discovery: reading Consul's default intention policy for %q (GET /v1/connect/intentions/check): the token needs service:read on %q, or set IntentionsConfig.Default: %w", service, service, err)
		}
		return false, false, fmt.Errorf("discovery: reading Consul's default intention policy for %q: %w", service, err)
	}
	return allow, true, nil
}

func sameIntention(a, b *api.Intention) bool {
	return a.SourceName == b.SourceName && a.DestinationName == b.DestinationName &&
		a.Action == b.Action && len(a.Permissions) == len(b.Permissions) && a.ModifyIndex == b.ModifyIndex
}

// precedence is Consul's intention precedence for the default namespace:
// exact source and destination 9, wildcard source 8, wildcard destination
// 6, both wildcard 5.
func precedence(ixn *api.Intention) int {
	p := 9
	if ixn.DestinationName == "*" {
		p = 6
	}
	if ixn.SourceName == "*" {
		p--
	}
	return p
}

// compileIntention compiles ixn's permissions. A permission Consul would
// have refused (a regular expression that does not compile) cannot be
// evaluated and is marked so: it decides as a denial.
func compileIntention(ixn *api.Intention) *intention {
	out := &intention{Intention: ixn, desc: fmt.Sprintf("consul intention %s => %s", ixn.SourceName, ixn.DestinationName)}
	for i, p := range ixn.Permissions {
		cp := permission{IntentionPermission: p, desc: fmt.Sprintf("%s permission %d (%s)", out.desc, i+1, describePermission(p))}
		switch {
		case p.JWT != nil:
			cp.invalid = "JWT requirements are not evaluated by gridmesh"
		case p.HTTP == nil:
			cp.invalid = "no HTTP match"
		}
		if h := p.HTTP; h != nil && cp.invalid == "" {
			if h.PathRegex != "" {
				re, err := regexp.Compile(`^(?:` + h.PathRegex + `)$`)
				if err != nil {
					cp.invalid = fmt.Sprintf("PathRegex %q: %v", h.PathRegex, err)
				}
				cp.path = re
			}
			cp.headers = make([]*regexp.Regexp, len(h.Header))
			for j, hm := range h.Header {
				if hm.Regex == "" {
					continue
				}
				expr := `^(?:` + hm.Regex + `)$`
				if hm.IgnoreCase {
					expr = `(?i)` + expr
				}
				re, err := regexp.Compile(expr)
				if err != nil {
					cp.invalid = fmt.Sprintf("header %q Regex %q: %v", hm.Name, hm.Regex, err)
				}
				cp.headers[j] = re
			}
		}
		out.perms = append(out.perms, cp)
	}
	return out
}

// describePermission is a short text of p for denial messages, e.g.
// "deny GET,POST path-prefix /admin/".
func describePermission(p *api.IntentionPermission) string {
	parts := []string{string(p.Action)}
	if h := p.HTTP; h != nil {
		if len(h.Methods) > 0 {
			parts = append(parts, strings.Join(h.Methods, ","))
		}
		switch {
		case h.PathExact != "":
			parts = append(parts, "path "+h.PathExact)
		case h.PathPrefix != "":
			parts = append(parts, "path-prefix "+h.PathPrefix)
		case h.PathRegex != "":
			parts = append(parts, "path-regex "+h.PathRegex)
		}
		for _, hm := range h.Header {
			parts = append(parts, "header "+hm.Name)
		}
	}
	return strings.Join(parts, " ")
}

// IntentionRequest is what an intention decides on. Its first three fields
// are those of security.Call, so the mesh passes a call as it is.
type IntentionRequest struct {
	// Caller is the caller's verified SPIFFE ID.
	Caller spiffeid.ID
	// Method is the full gRPC method ("/pkg.Service/Method") for gRPC
	// calls, or the HTTP method ("GET") for HTTP requests.
	Method string
	// Path is the HTTP request's normalized path (security.PathPolicy.Normalize),
	// which L7 permissions' path matches are applied to; empty for gRPC
	// calls, whose path is Method (a gRPC call is an HTTP/2 POST to it).
	Path string
	// Header is the HTTP request's headers, for header permissions. Nil
	// for a gRPC call: its incoming metadata in ctx is used instead.
	Header http.Header
}

// Authorize decides whether caller may call method (a full gRPC method, or
// an HTTP method) on the service. It is AuthorizeRequest without a path:
// for gRPC calls that is complete (the method is the path); an HTTP
// request decided by an L7 intention is denied, since its permissions
// need the path. It does not block.
func (in *Intentions) Authorize(ctx context.Context, caller spiffeid.ID, method string) (allowed bool, rule string) {
	return in.AuthorizeRequest(ctx, IntentionRequest{Caller: caller, Method: method})
}

// AuthorizeRequest decides req by Consul's rules: the highest-precedence
// intention whose source matches the caller's service name (exact beats
// "*") decides; an L4 intention by its action, an L7 one by its first
// permission that matches the request (path exact/prefix/regex, methods,
// headers), or, when none does, the default. No matching intention: the
// default. rule names what decided, for the denial message.
//
// A gRPC call is matched as Consul's Envoy would see it: an HTTP/2 POST
// to "/pkg.Service/Method" with the call's metadata as headers, so a
// PathPrefix "/pkg.Service/" permission covers the service's methods.
// It does not block.
//
// The mesh turns it into a security.Authorizer:
//
//	func(ctx context.Context, c security.Call) error {
//		req := discovery.IntentionRequest{Caller: c.Caller, Method: c.Method, Path: c.Path}
//		if ok, rule := in.AuthorizeRequest(ctx, req); !ok {
//			return security.Deny(c, rule)
//		}
//		return nil
//	}
func (in *Intentions) AuthorizeRequest(ctx context.Context, req IntentionRequest) (allowed bool, rule string) {
	method, path, header, known := requestShape(ctx, req)
	name, named := in.cfg.SourceName(req.Caller)
	in.mu.RLock()
	defer in.mu.RUnlock()
	for _, ixn := range in.rules {
		if ixn.SourceName != "*" && (!named || ixn.SourceName != name) {
			continue
		}
		if len(ixn.perms) == 0 {
			return ixn.Action == api.IntentionActionAllow, fmt.Sprintf("%s (%s)", ixn.desc, ixn.Action)
		}
		if !known {
			return false, ixn.desc + " (L7 permissions need the HTTP request path, which was not given: denied)"
		}
		for _, p := range ixn.perms {
			if p.invalid != "" {
				return false, fmt.Sprintf("%s (cannot be evaluated: %s: denied)", p.desc, p.invalid)
			}
			if p.matches(method, path, header) {
				return p.Action == api.IntentionActionAllow, p.desc
			}
		}
		return in.defaultAllow, fmt.Sprintf("%s (no permission matches %s %s): %s", ixn.desc, method, path, in.defaultText())
	}
	return in.defaultAllow, in.defaultText()
}

func (in *Intentions) defaultText() string {
	verdict := "deny"
	if in.defaultAllow {
		verdict = "allow"
	}
	if in.defaultFrom == "" {
		// DefaultFromConsul while a wildcard intention hid the default
		// since the watch began: deny, the safe side.
		return "consul intentions default deny (Consul's default not observed yet)"
	}
	return fmt.Sprintf("consul intentions default %s (%s)", verdict, in.defaultFrom)
}

// requestShape returns the HTTP method, path and headers req is matched
// with; known is false for an HTTP request without a path.
func requestShape(ctx context.Context, req IntentionRequest) (method, path string, header http.Header, known bool) {
	if req.Path == "" && strings.HasPrefix(req.Method, "/") {
		h := req.Header
		if h == nil {
			h = http.Header{}
			md, _ := metadata.FromIncomingContext(ctx)
			for k, vs := range md {
				h[http.CanonicalHeaderKey(k)] = vs
			}
		}
		return http.MethodPost, req.Method, h, true
	}
	return req.Method, req.Path, req.Header, req.Path != ""
}

// matches applies an HTTP permission as Envoy's RBAC does for Consul: every
// condition given must hold; paths are matched case-sensitively and a
// regular expression must match the whole path or value; several values
// of one header are matched joined with ",".
func (p *permission) matches(method, path string, header http.Header) bool {
	h := p.HTTP
	switch {
	case h.PathExact != "" && path != h.PathExact:
		return false
	case h.PathPrefix != "" && !strings.HasPrefix(path, h.PathPrefix):
		return false
	case p.path != nil && !p.path.MatchString(path):
		return false
	}
	if len(h.Methods) > 0 && !slices.Contains(h.Methods, method) {
		return false
	}
	for i, hm := range h.Header {
		vs, present := header[http.CanonicalHeaderKey(hm.Name)]
		v := strings.Join(vs, ",")
		var ok bool
		switch {
		case hm.Present:
			ok = present
		case !present:
			ok = false
		case hm.Exact != "":
			ok = fold(hm.IgnoreCase, v) == fold(hm.IgnoreCase, hm.Exact)
		case hm.Prefix != "":
			ok = strings.HasPrefix(fold(hm.IgnoreCase, v), fold(hm.IgnoreCase, hm.Prefix))
		case hm.Suffix != "":
			ok = strings.HasSuffix(fold(hm.IgnoreCase, v), fold(hm.IgnoreCase, hm.Suffix))
		case hm.Contains != "":
			ok = strings.Contains(fold(hm.IgnoreCase, v), fold(hm.IgnoreCase, hm.Contains))
		case p.headers[i] != nil:
			ok = p.headers[i].MatchString(v)
		default: // only a name: Consul requires a match type; treat as presence
			ok = present
		}
		if ok == hm.Invert {
			return false
		}
	}
	return true
}

func fold(ignoreCase bool, s string) string {
	if ignoreCase {
		return strings.ToLower(s)
	}
	return s
}

// Len is the number of intentions in force.
func (in *Intentions) Len() int {
	in.mu.RLock()
	defer in.mu.RUnlock()
	return len(in.rules)
}

// Close stops watching; the last intentions stay in force for Authorize.
// It is safe to call more than once.
func (in *Intentions) Close() error {
	in.once.Do(func() {
		in.cancel()
		<-in.done
	})
	return nil
}
