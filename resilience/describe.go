package resilience

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"time"
)

// Effective is the policy that applies to one destination and method, with
// where it came from: what the debug endpoint shows. Its JSON form writes
// durations as strings ("250ms").
type Effective struct {
	// Source is the Config's source: "code", "xds" or "consul".
	Source      string `json:"source"`
	Destination string `json:"destination"`
	// Method is "/pkg.Service/Method" or "VERB /path"; empty for the
	// destination as a whole.
	Method string `json:"method,omitempty"`
	// Override is the Policy.Methods key that matched Method, if any.
	Override string `json:"override,omitempty"`
	// Idempotency is what the method is taken to declare, and
	// IdempotencyFrom why: "config", "proto", "http-method" or "none".
	Idempotency     Idempotency `json:"idempotency"`
	IdempotencyFrom string      `json:"idempotency_from"`
	// Hedged says whether Hedge applies to this method (only reads).
	Hedged    bool          `json:"hedged"`
	Timeout   time.Duration `json:"timeout"`
	Retry     Retry         `json:"retry"`
	Hedge     Hedge         `json:"hedge"`
	Budget    Budget        `json:"budget"`
	Breaker   Breaker       `json:"breaker"`
	Bulkhead  Bulkhead      `json:"bulkhead"`
	RateLimit RateLimit     `json:"rate_limit"`
	// BreakerState is the destination breaker's current state.
	BreakerState BreakerState `json:"breaker_state"`
}

// Describe returns the effective policy for method on destination, as a
// call would use it now. method may be empty. It does not block and is safe
// for concurrent use; it creates the destination's state if needed.
func (c *Client) Describe(destination, method string) Effective {
	cfg := c.cfg.Load()
	d := c.destination(destination)
	ms := d.resolve(method)
	e := Effective{
		Source:       cfg.Source,
		Destination:  destination,
		Method:       method,
		Timeout:      ms.timeout,
		Retry:        ms.retry,
		Hedge:        ms.hedge,
		Budget:       d.policy.Budget,
		Breaker:      d.policy.Breaker,
		Bulkhead:     d.policy.Bulkhead,
		RateLimit:    d.policy.RateLimit,
		BreakerState: BreakerDisabled,
	}
	if method != "" {
		_, e.Override, _ = d.policy.methodOverride(method)
	}
	switch {
	case ms.declared != IdempotencyUnknown:
		e.Idempotency, e.IdempotencyFrom = ms.declared, "config"
	case strings.HasPrefix(method, "/"):
		if e.Idempotency = c.levels.level(method); e.Idempotency != IdempotencyUnknown {
			e.IdempotencyFrom = "proto"
		}
	case method != "":
		verb, _, _ := strings.Cut(method, " ")
		if e.Idempotency = httpLevel(verb); e.Idempotency != IdempotencyUnknown {
			e.IdempotencyFrom = "http-method"
		}
	}
	if e.IdempotencyFrom == "" {
		e.IdempotencyFrom = "none"
	}
	e.Hedged = ms.hedgePolicy != nil && e.Idempotency == NoSideEffects
	if d.breaker != nil {
		e.BreakerState = breakerState(d.breaker.State())
	}
	return e
}

// Destinations describes every destination called so far, sorted by name,
// with no method: the breaker states and policies for the debug endpoint.
func (c *Client) Destinations() []Effective {
	names := make([]string, 0)
	for name := range *c.dests.Load() {
		names = append(names, name)
	}
	slices.Sort(names)
	out := make([]Effective, 0, len(names))
	for _, n := range names {
		out = append(out, c.Describe(n, ""))
	}
	return out
}

// Config returns the configuration in force.
func (c *Client) Config() Config { return *c.cfg.Load() }

// MarshalJSON writes e with durations as strings.
func (e Effective) MarshalJSON() ([]byte, error) {
	type plain Effective // no MarshalJSON: avoids recursion
	return json.Marshal(humanize(reflect.ValueOf(plain(e))))
}

var durationType = reflect.TypeFor[time.Duration]()

// humanize turns a struct into maps keyed by JSON names, with durations as
// strings, so that the debug endpoint reads "25ms" instead of 25000000.
func humanize(v reflect.Value) any {
	switch {
	case v.Type() == durationType:
		return time.Duration(v.Int()).String()
	case v.Kind() == reflect.Struct:
		m := make(map[string]any, v.NumField())
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fv := v.Field(i)
			if strings.Contains(opts, "omitempty") && fv.IsZero() {
				continue
			}
			m[name] = humanize(fv)
		}
		return m
	}
	return v.Interface()
}
