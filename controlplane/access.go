package controlplane

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// The rules of the HTTP API under mTLS, named in every refusal.
const (
	// RuleAuthenticated: every request needs a verified client SVID.
	RuleAuthenticated = "authenticated"
	// RuleOwnIdentity: a workload registers and deregisters only
	// endpoints whose spiffe_id is its own SVID's.
	RuleOwnIdentity = "own-identity"
	// RuleServiceIdentity: when the config gives a service a spiffe_id,
	// only that identity registers the service's endpoints.
	RuleServiceIdentity = "service-identity"
	// RuleOwner: an endpoint registered by one identity is replaced or
	// removed only by that identity.
	RuleOwner = "owner"
	// RuleOperatorOnly: /debug shows every identity's config (routes,
	// RBAC) and is for operators only.
	RuleOperatorOnly = "operator-only"
)

// caller is who made an HTTP API request, as far as the API's rules go.
type caller struct {
	id       string // verified SPIFFE ID; "" in plaintext mode
	operator bool   // may do anything (plaintext mode: everyone)
}

// forbidden is a refusal by one of the rules.
type forbidden struct {
	code int // 401 or 403
	rule string
	msg  string
}

func (f *forbidden) Error() string {
	return fmt.Sprintf("forbidden by rule %s: %s", f.rule, f.msg)
}

// operatorHint tells a refused caller how it could be allowed.
const operatorHint = "operators (meshd serve -operator-id) may do anything"

// callerOf returns who made r, or the refusal when nobody verified did.
func (s *Server) callerOf(r *http.Request) (caller, *forbidden) {
	switch {
	case s.tr == nil:
		return caller{}, &forbidden{code: http.StatusServiceUnavailable, rule: RuleAuthenticated, msg: s.trErr.Error()}
	case s.tr.mtls == nil:
		return caller{operator: true}, nil
	}
	id, ok := httpPeer(r)
	if !ok {
		return caller{}, &forbidden{code: http.StatusUnauthorized, rule: RuleAuthenticated,
			msg: "the request came without a verified client SVID; meshd's API is served over mTLS by Server.Serve and ServeHTTP only"}
	}
	return caller{id: id.String(), operator: s.tr.operators[id]}, nil
}

// mayRegister decides whether c may add or replace ep, registered before
// as prev (nil: new). The config's service identity is read under s.mu.
func (s *Server) mayRegister(c caller, ep Endpoint, prev *Endpoint) *forbidden {
	if c.operator {
		return nil
	}
	if ep.SPIFFEID != c.id {
		return &forbidden{code: http.StatusForbidden, rule: RuleOwnIdentity, msg: fmt.Sprintf(
			"a workload registers only endpoints whose spiffe_id is its own SVID's: the caller is %s, the registration's spiffe_id is %s; set spiffe_id to %s (%s)",
			c.id, quoteValue(ep.SPIFFEID), c.id, operatorHint)}
	}
	s.mu.Lock()
	want := ""
	if s.cfg != nil {
		for i := range s.cfg.Services {
			if s.cfg.Services[i].Name == ep.Service {
				want = s.cfg.Services[i].SPIFFEID
			}
		}
	}
	s.mu.Unlock()
	if want != "" && want != c.id {
		return &forbidden{code: http.StatusForbidden, rule: RuleServiceIdentity, msg: fmt.Sprintf(
			"the config gives service %s the identity %s, so only %s registers its endpoints; the caller is %s (%s)",
			quoteValue(ep.Service), want, want, c.id, operatorHint)}
	}
	if prev != nil && prev.SPIFFEID != c.id {
		return &forbidden{code: http.StatusForbidden, rule: RuleOwner, msg: fmt.Sprintf(
			"%s of service %s is registered by %s; only it replaces that registration, the caller is %s (%s)",
			cutText(ep.Address), quoteValue(ep.Service), quoteValue(prev.SPIFFEID), c.id, operatorHint)}
	}
	return nil
}

// mayDeregister decides whether c may remove ep.
func (c caller) mayDeregister(ep *Endpoint) *forbidden {
	if c.operator || ep.SPIFFEID == c.id {
		return nil
	}
	return &forbidden{code: http.StatusForbidden, rule: RuleOwnIdentity, msg: fmt.Sprintf(
		"a workload deregisters only endpoints whose spiffe_id is its own SVID's: %s of service %s has spiffe_id %s, the caller is %s (%s)",
		cutText(ep.Address), quoteValue(ep.Service), quoteValue(ep.SPIFFEID), c.id, operatorHint)}
}

// writeForbidden answers a refusal: the status, the error and the rule.
func writeForbidden(w http.ResponseWriter, f *forbidden) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(f.code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": f.Error(), "rule": f.rule})
}
