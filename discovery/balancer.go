package discovery

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	// The policies Balancer names, registered with grpc-go by these imports.
	_ "google.golang.org/grpc/balancer/leastrequest"
	_ "google.golang.org/grpc/balancer/weightedroundrobin"
	// outlier_detection_experimental is registered only by grpc-go's xds
	// package (its balancer lives under internal/xds). The mesh needs that
	// package for xds:/// targets anyway.
	_ "google.golang.org/grpc/xds"
)

// Policy names a client-side load-balancing policy.
type Policy string

const (
	// RoundRobin sends each call to the next ready endpoint in turn.
	RoundRobin Policy = "round_robin"
	// LeastRequest picks ChoiceCount random endpoints (default 2, "power of
	// two choices") and sends the call to the one with fewest calls in
	// flight. grpc-go's least_request_experimental.
	LeastRequest Policy = "least_request"
	// RingHash hashes a request header (HashHeader) onto a consistent-hash
	// ring, so equal keys reach the same endpoint and removing an endpoint
	// remaps only its keys. It is gridmesh's own policy (see ringhash.go
	// for why not grpc-go's ring_hash_experimental); calls without the
	// header go to a random endpoint.
	RingHash Policy = "ring_hash"
	// WeightedRoundRobin is round robin weighted by the load each endpoint
	// reports through ORCA (per-call trailers or the out-of-band stream):
	// weight = qps / utilization. Endpoints that report nothing are treated
	// alike, which is plain round robin. grpc-go's weighted_round_robin.
	WeightedRoundRobin Policy = "weighted_round_robin"
	// PickFirst uses one endpoint until it fails. grpc-go's default.
	PickFirst Policy = "pick_first"
)

// Balancer is a typed client-side balancing configuration. The zero value is
// round robin without outlier detection.
type Balancer struct {
	// Policy defaults to RoundRobin.
	Policy Policy
	// HashHeader is the request metadata key (an HTTP/2 header) whose value
	// is the ring_hash key, e.g. "x-market-id". Required for RingHash, not
	// allowed otherwise. Lower-case; not a "-bin" or "grpc-" key.
	HashHeader string
	// RingReplicas is how many ring entries each endpoint gets, 1-4096.
	// More spread keys more evenly. Zero: 256.
	RingReplicas int
	// ChoiceCount is how many endpoints LeastRequest compares, 2 to 10.
	// Zero: 2.
	ChoiceCount uint32
	// Weighted tunes WeightedRoundRobin; nil: grpc-go's defaults.
	Weighted *WeightedConfig
	// Outlier wraps the policy in grpc-go's outlier detection, which ejects
	// endpoints whose calls fail. Nil: no ejection.
	Outlier *OutlierDetection
}

// WeightedConfig tunes WeightedRoundRobin. Zero fields take grpc-go's
// defaults (given in each field).
type WeightedConfig struct {
	// OOBReporting makes endpoints report load on an out-of-band stream
	// every OOBReportingPeriod (default 10s) instead of per-call trailers.
	OOBReporting       bool
	OOBReportingPeriod time.Duration
	// BlackoutPeriod is how long a new weight is ignored (default 10s).
	BlackoutPeriod time.Duration
	// WeightExpirationPeriod drops a weight not refreshed this long
	// (default 3m).
	WeightExpirationPeriod time.Duration
	// WeightUpdatePeriod is how often weights are recomputed (default 1s,
	// at least 100ms).
	WeightUpdatePeriod time.Duration
	// ErrorUtilizationPenalty weighs errors against qps (default 1.0).
	ErrorUtilizationPenalty float64
}

// OutlierDetection configures grpc-go's outlier_detection_experimental
// (gRFC A50). Zero fields take grpc-go's defaults, given in each field.
type OutlierDetection struct {
	// Interval between ejection sweeps (default 10s).
	Interval time.Duration
	// BaseEjectionTime is the first ejection's length; it grows with each
	// further ejection (default 30s).
	BaseEjectionTime time.Duration
	// MaxEjectionTime caps an ejection (default 300s).
	MaxEjectionTime time.Duration
	// MaxEjectionPercent caps the share of endpoints ejected at once, 0-100
	// (default 10). Zero means the default; there is no way to say 0%.
	MaxEjectionPercent uint32
	// SuccessRate ejects endpoints whose success rate is a statistical
	// outlier. Nil: off.
	SuccessRate *SuccessRateEjection
	// FailurePercentage ejects endpoints whose failure share passes a
	// threshold. Nil: off.
	FailurePercentage *FailurePercentageEjection
}

// SuccessRateEjection: zero fields take the defaults shown.
type SuccessRateEjection struct {
	StdevFactor           uint32 // in thousandths: 1900 = 1.9 (default 1900)
	EnforcementPercentage uint32 // 0-100 (default 100)
	MinimumHosts          uint32 // (default 5)
	RequestVolume         uint32 // per endpoint per interval (default 100)
}

// FailurePercentageEjection: zero fields take the defaults shown.
// EnforcementPercentage defaults to 0, which detects but never ejects: set
// it to eject.
type FailurePercentageEjection struct {
	Threshold             uint32 // failure percentage, 0-100 (default 85)
	EnforcementPercentage uint32 // 0-100 (default 0)
	MinimumHosts          uint32 // (default 5)
	RequestVolume         uint32 // per endpoint per interval (default 50)
}

// Validate reports every problem with b, each naming the field, the value
// and what is expected.
func (b Balancer) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("discovery: Balancer."+format, args...))
	}
	switch b.Policy {
	case "", RoundRobin, LeastRequest, RingHash, WeightedRoundRobin, PickFirst:
	default:
		bad("Policy %q: want one of round_robin, least_request, ring_hash, weighted_round_robin, pick_first", b.Policy)
	}
	if b.Policy == RingHash {
		h := b.HashHeader
		switch {
		case h == "":
			bad("HashHeader: ring_hash needs the request header that carries the hash key, e.g. \"x-market-id\"")
		case h != strings.ToLower(h) || strings.ContainsFunc(h, func(r rune) bool {
			return (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' && r != '_' && r != '.'
		}):
			bad("HashHeader %q: want a lower-case metadata key of a-z, 0-9, '-', '_', '.'", h)
		case strings.HasSuffix(h, "-bin") || strings.HasPrefix(h, "grpc-"):
			bad("HashHeader %q: \"-bin\" and \"grpc-\" keys cannot be hash keys", h)
		}
		if b.RingReplicas < 0 || b.RingReplicas > 4096 {
			bad("RingReplicas %d: want 1-4096, or 0 for 256", b.RingReplicas)
		}
	} else if b.HashHeader != "" || b.RingReplicas != 0 {
		bad("HashHeader and RingReplicas are for ring_hash; Policy is %q", b.policy())
	}
	if b.ChoiceCount != 0 && (b.Policy != LeastRequest || b.ChoiceCount < 2 || b.ChoiceCount > 10) {
		bad("ChoiceCount %d: want 2-10, with Policy least_request", b.ChoiceCount)
	}
	if w := b.Weighted; w != nil {
		if b.Policy != WeightedRoundRobin {
			bad("Weighted is for weighted_round_robin; Policy is %q", b.policy())
		}
		for name, d := range map[string]time.Duration{"OOBReportingPeriod": w.OOBReportingPeriod, "BlackoutPeriod": w.BlackoutPeriod, "WeightExpirationPeriod": w.WeightExpirationPeriod, "WeightUpdatePeriod": w.WeightUpdatePeriod} {
			if d < 0 {
				bad("Weighted.%s %v: must not be negative", name, d)
			}
		}
		if w.ErrorUtilizationPenalty < 0 {
			bad("Weighted.ErrorUtilizationPenalty %v: must not be negative", w.ErrorUtilizationPenalty)
		}
	}
	if o := b.Outlier; o != nil {
		for name, d := range map[string]time.Duration{"Interval": o.Interval, "BaseEjectionTime": o.BaseEjectionTime, "MaxEjectionTime": o.MaxEjectionTime} {
			if d < 0 {
				bad("Outlier.%s %v: must not be negative", name, d)
			}
		}
		pct := func(name string, v uint32) {
			if v > 100 {
				bad("Outlier.%s %d: want a percentage, 0-100", name, v)
			}
		}
		pct("MaxEjectionPercent", o.MaxEjectionPercent)
		if o.SuccessRate != nil {
			pct("SuccessRate.EnforcementPercentage", o.SuccessRate.EnforcementPercentage)
		}
		if o.FailurePercentage != nil {
			pct("FailurePercentage.Threshold", o.FailurePercentage.Threshold)
			pct("FailurePercentage.EnforcementPercentage", o.FailurePercentage.EnforcementPercentage)
		}
		if o.SuccessRate == nil && o.FailurePercentage == nil {
			bad("Outlier: set SuccessRate or FailurePercentage (or both); with neither nothing is ever ejected")
		}
	}
	return errors.Join(errs...)
}

func (b Balancer) policy() Policy {
	if b.Policy == "" {
		return RoundRobin
	}
	return b.Policy
}

// durationJSON is a protobuf JSON duration ("1.5s"), as gRPC service
// configs spell them.
func durationJSON(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}

// LoadBalancingConfig returns b as the value of a service config's
// "loadBalancingConfig" field. It validates b first.
func (b Balancer) LoadBalancingConfig() (json.RawMessage, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	cfg := map[string]any{}
	switch b.policy() {
	case LeastRequest:
		if b.ChoiceCount != 0 {
			cfg["choiceCount"] = b.ChoiceCount
		}
	case RingHash:
		cfg["hashHeader"] = b.HashHeader
		if b.RingReplicas != 0 {
			cfg["replicas"] = b.RingReplicas
		}
	case WeightedRoundRobin:
		if w := b.Weighted; w != nil {
			if w.OOBReporting {
				cfg["enableOobLoadReport"] = true
			}
			for k, d := range map[string]time.Duration{"oobReportingPeriod": w.OOBReportingPeriod, "blackoutPeriod": w.BlackoutPeriod, "weightExpirationPeriod": w.WeightExpirationPeriod, "weightUpdatePeriod": w.WeightUpdatePeriod} {
				if d != 0 {
					cfg[k] = durationJSON(d)
				}
			}
			if w.ErrorUtilizationPenalty != 0 {
				cfg["errorUtilizationPenalty"] = w.ErrorUtilizationPenalty
			}
		}
	}
	policy := []map[string]any{{grpcName(b.policy()): cfg}}
	if o := b.Outlier; o != nil {
		od := map[string]any{"childPolicy": policy}
		for k, d := range map[string]time.Duration{"interval": o.Interval, "baseEjectionTime": o.BaseEjectionTime, "maxEjectionTime": o.MaxEjectionTime} {
			if d != 0 {
				od[k] = durationJSON(d)
			}
		}
		if o.MaxEjectionPercent != 0 {
			od["maxEjectionPercent"] = o.MaxEjectionPercent
		}
		if s := o.SuccessRate; s != nil {
			od["successRateEjection"] = nonZero(map[string]uint32{"stdevFactor": s.StdevFactor, "enforcementPercentage": s.EnforcementPercentage, "minimumHosts": s.MinimumHosts, "requestVolume": s.RequestVolume})
		}
		if f := o.FailurePercentage; f != nil {
			od["failurePercentageEjection"] = nonZero(map[string]uint32{"threshold": f.Threshold, "enforcementPercentage": f.EnforcementPercentage, "minimumHosts": f.MinimumHosts, "requestVolume": f.RequestVolume})
		}
		policy = []map[string]any{{"outlier_detection_experimental": od}}
	}
	return json.Marshal(policy)
}

func nonZero(m map[string]uint32) map[string]uint32 {
	for k, v := range m {
		if v == 0 {
			delete(m, k)
		}
	}
	return m
}

func grpcName(p Policy) string {
	switch p {
	case LeastRequest:
		return "least_request_experimental"
	case RingHash:
		return ringHashName
	}
	return string(p)
}

// ServiceConfig returns b as a complete gRPC service config JSON, for
// grpc.WithDefaultServiceConfig. It validates b first.
func (b Balancer) ServiceConfig() (string, error) {
	lb, err := b.LoadBalancingConfig()
	if err != nil {
		return "", err
	}
	out, err := json.Marshal(map[string]json.RawMessage{"loadBalancingConfig": lb})
	if err != nil {
		return "", fmt.Errorf("discovery: service config: %w", err)
	}
	return string(out), nil
}
