package resilience

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// MetaPrefix starts every Consul service meta key that FromConsulMeta reads.
const MetaPrefix = "resilience-"

// The Consul service meta keys FromConsulMeta reads, and their forms.
var metaKeys = map[string]string{
	"resilience-timeout":                      "a duration, e.g. 15s",
	"resilience-retry-max-attempts":           "an integer >= 0, e.g. 3",
	"resilience-retry-initial-backoff":        "a duration, e.g. 25ms",
	"resilience-retry-max-backoff":            "a duration, e.g. 1s",
	"resilience-retry-per-try-timeout":        "a duration, e.g. 500ms",
	"resilience-budget-ratio":                 "a fraction, e.g. 0.2",
	"resilience-budget-min-per-second":        "a number >= 0, e.g. 10",
	"resilience-breaker-consecutive-failures": "an integer >= 0, e.g. 5",
	"resilience-breaker-failure-rate":         "a fraction, e.g. 0.5",
	"resilience-breaker-open-delay":           "a duration, e.g. 3s",
	"resilience-bulkhead-max-concurrent":      "an integer >= 0, e.g. 1024",
	"resilience-rate-limit":                   "requests/period, e.g. 100/1s",
	"resilience-hedge-delay":                  "a duration, e.g. 50ms (reads only)",
	"resilience-idempotent":                   "comma-separated gRPC methods, e.g. /rec.v1.Trading/SettleTrade",
	"resilience-no-side-effects":              "comma-separated gRPC methods, e.g. /rec.v1.Trading/GetQuote",
}

// FromConsulMeta returns base changed by the "resilience-*" keys of a Consul
// service's meta, e.g. resilience-retry-max-attempts=2. Other keys are
// ignored; an unknown "resilience-*" key or a bad value is an error naming
// the key, the value and the expected form. The result is validated. Use it
// with Config.Source = SourceConsul.
func FromConsulMeta(base Policy, meta map[string]string) (Policy, error) {
	p := base
	p.Methods = make(map[string]MethodPolicy, len(base.Methods))
	for k, v := range base.Methods {
		p.Methods[k] = v
	}
	var errs []error
	keys := make([]string, 0, len(meta))
	for k := range meta {
		if strings.HasPrefix(k, MetaPrefix) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := strings.TrimSpace(meta[k])
		form, known := metaKeys[k]
		if !known {
			errs = append(errs, fmt.Errorf("consul meta %q: unknown key; known: %s", k, strings.Join(slices.Sorted(mapKeys(metaKeys)), ", ")))
			continue
		}
		if err := applyMeta(&p, k, v); err != nil {
			errs = append(errs, fmt.Errorf("consul meta %s=%q: want %s", k, v, form))
		}
	}
	if len(p.Methods) == 0 {
		p.Methods = nil
	}
	if err := errors.Join(errs...); err != nil {
		return base, fmt.Errorf("resilience: %w", err)
	}
	if errs := p.validate("consul meta"); len(errs) > 0 {
		return base, fmt.Errorf("resilience: %w", errors.Join(errs...))
	}
	return p, nil
}

func applyMeta(p *Policy, key, v string) error {
	dur := func(dst *time.Duration) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return errors.New("bad duration")
		}
		*dst = d
		return nil
	}
	uintv := func(dst *uint) error {
		n, err := strconv.ParseUint(v, 10, 32)
		*dst = uint(n)
		return err
	}
	frac := func(dst *float64) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f > 1 {
			return errors.New("bad fraction")
		}
		*dst = f
		return nil
	}
	switch key {
	case "resilience-timeout":
		return dur(&p.Timeout)
	case "resilience-retry-max-attempts":
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return errors.New("bad integer")
		}
		p.Retry.MaxAttempts = n
	case "resilience-retry-initial-backoff":
		return dur(&p.Retry.InitialBackoff)
	case "resilience-retry-max-backoff":
		return dur(&p.Retry.MaxBackoff)
	case "resilience-retry-per-try-timeout":
		return dur(&p.Retry.PerTryTimeout)
	case "resilience-budget-ratio":
		return frac(&p.Budget.Ratio)
	case "resilience-budget-min-per-second":
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 {
			return errors.New("bad number")
		}
		p.Budget.MinPerSecond = f
	case "resilience-breaker-consecutive-failures":
		return uintv(&p.Breaker.ConsecutiveFailures)
	case "resilience-breaker-failure-rate":
		return frac(&p.Breaker.FailureRate)
	case "resilience-breaker-open-delay":
		return dur(&p.Breaker.OpenDelay)
	case "resilience-bulkhead-max-concurrent":
		return uintv(&p.Bulkhead.MaxConcurrent)
	case "resilience-rate-limit":
		n, per, ok := strings.Cut(v, "/")
		if !ok {
			return errors.New("no /")
		}
		r, err := strconv.ParseUint(n, 10, 32)
		if err != nil {
			return err
		}
		d, err := time.ParseDuration(per)
		if err != nil || d <= 0 {
			return errors.New("bad period")
		}
		p.RateLimit = RateLimit{Requests: uint(r), Per: d}
	case "resilience-hedge-delay":
		return dur(&p.Hedge.Delay)
	case "resilience-idempotent", "resilience-no-side-effects":
		lvl := Idempotent
		if key == "resilience-no-side-effects" {
			lvl = NoSideEffects
		}
		for _, m := range strings.Split(v, ",") {
			m = strings.TrimSpace(m)
			if !strings.HasPrefix(m, "/") || !validMethodKey(m) || strings.HasSuffix(m, "/") {
				return errors.New("bad method")
			}
			mp := p.Methods[m]
			mp.Idempotency = lvl
			p.Methods[m] = mp
		}
	}
	return nil
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
