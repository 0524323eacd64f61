// Package load drives the REC gateway with orders from concurrent
// participants, as a participant's client should: every order carries an
// Idempotency-Key and is repeated with the same key and body until the
// gateway gives a definite answer (201 accepted, 422 rejected, 4xx
// invalid), or RetryFor passes. cmd/recload, the demo and the e2e test use
// it.
package load

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gridmesh/gridmesh/examples/rec/gateway"
	"github.com/gridmesh/gridmesh/examples/rec/platform"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
)

// Config configures a run.
type Config struct {
	// URL is the gateway's base URL. Required.
	URL string
	// Orders stops the run after this many orders; 0: no limit.
	Orders int
	// Duration stops the run after this long; 0: no limit (Orders or ctx
	// must end it).
	Duration time.Duration
	// Rate is orders started per second over all workers; 0: as fast as
	// the workers go.
	Rate float64
	// Concurrency is the number of workers. Default 8.
	Concurrency int
	// Participants and Markets to trade; default platform.NewSeed's.
	Participants []string
	Markets      []*recpb.Market
	// MidCents is the price orders scatter around (±15%). Default 1500.
	MidCents int64
	// MaxMWh bounds an order's size, 1 to MaxMWh. Default 5.
	MaxMWh int64
	// CancelShare is the share of accepted open orders then cancelled.
	CancelShare float64
	// RetryFor bounds the repeats of one order. Default 60s.
	RetryFor time.Duration
	// Progress, if set, gets a live progress line every second.
	Progress io.Writer
	// Client defaults to an http.Client with a 30s timeout.
	Client *http.Client
}

// Result is what a run saw.
type Result struct {
	Started  int
	Accepted int
	Rejected int
	Invalid  int // 400/404/409-type answers: a bug in the run
	// Unknown counts orders never answered definitely within RetryFor.
	Unknown   int
	Cancelled int
	// Retries counts repeats, and Errors every failed attempt by kind
	// ("503", "409 in flight", "transport", ...).
	Retries   int
	Errors    map[string]int
	Latencies []time.Duration // first attempt to definite answer
	Elapsed   time.Duration
	// Acks are the definite answers, for the audit.
	Acks []platform.Ack
}

// Percentile returns the q-quantile (0..1) of the latencies.
func (r *Result) Percentile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	s := slices.Clone(r.Latencies)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Throughput is definite answers per second.
func (r *Result) Throughput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Accepted+r.Rejected) / r.Elapsed.Seconds()
}

// Summary is a few lines for humans.
func (r *Result) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "orders:     %d sent in %v, %.1f/s; %d accepted, %d rejected, %d invalid, %d unknown, %d cancelled after\n",
		r.Started, r.Elapsed.Round(time.Millisecond), r.Throughput(), r.Accepted, r.Rejected, r.Invalid, r.Unknown, r.Cancelled)
	fmt.Fprintf(&b, "latency:    p50 %v  p99 %v  p99.9 %v  max %v (first attempt to definite answer, retries included)\n",
		r.Percentile(0.5).Round(time.Microsecond), r.Percentile(0.99).Round(time.Microsecond), r.Percentile(0.999).Round(time.Microsecond), r.Percentile(1).Round(time.Microsecond))
	var kinds []string
	for k, n := range r.Errors {
		kinds = append(kinds, fmt.Sprintf("%s ×%d", k, n))
	}
	slices.Sort(kinds)
	if len(kinds) == 0 {
		kinds = []string{"none"}
	}
	fmt.Fprintf(&b, "errors:     %d retries; failed attempts by kind: %s\n", r.Retries, strings.Join(kinds, ", "))
	return b.String()
}

// Run places orders until Orders, Duration or ctx ends the run, then
// returns what it saw. It returns an error only when ctx ended first.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if len(cfg.Participants) == 0 || len(cfg.Markets) == 0 {
		s := platform.NewSeed(20, 0, 0)
		if len(cfg.Participants) == 0 {
			cfg.Participants = s.Participants
		}
		if len(cfg.Markets) == 0 {
			cfg.Markets = s.Markets
		}
	}
	if cfg.MidCents <= 0 {
		cfg.MidCents = 1500
	}
	if cfg.MaxMWh <= 0 {
		cfg.MaxMWh = 5
	}
	if cfg.RetryFor <= 0 {
		cfg.RetryFor = time.Minute
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 30 * time.Second}
	}
	runCtx := ctx
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}

	var (
		mu     sync.Mutex
		res    = &Result{Errors: map[string]int{}}
		issued atomic.Int64
		done   atomic.Int64
		start  = time.Now()
	)
	var tick <-chan time.Time
	if cfg.Rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / cfg.Rate))
		defer t.Stop()
		tick = t.C
	}
	stopProgress := make(chan struct{})
	var pwg sync.WaitGroup
	if cfg.Progress != nil {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					return
				case <-t.C:
					mu.Lock()
					fmt.Fprintf(cfg.Progress, "\r%6.1fs  %5d sent  %5d accepted  %4d rejected  %4d retries  %5.1f/s   ",
						time.Since(start).Seconds(), issued.Load(), res.Accepted, res.Rejected, res.Retries, float64(done.Load())/time.Since(start).Seconds())
					mu.Unlock()
				}
			}
		}()
	}

	var wg sync.WaitGroup
	for w := 0; w < cfg.Concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
			for {
				if tick != nil {
					select {
					case <-tick:
					case <-runCtx.Done():
						return
					}
				}
				if runCtx.Err() != nil {
					return
				}
				if n := issued.Add(1); cfg.Orders > 0 && n > int64(cfg.Orders) {
					return
				}
				o := randomOrder(rng, cfg)
				// An order, once started, runs to its answer even when the
				// run's time is up: only ctx (the caller's) cuts it short.
				out := place(ctx, cfg, o)
				done.Add(1)
				mu.Lock()
				res.Started++
				res.Retries += out.attempts - 1
				for k, n := range out.errs {
					res.Errors[k] += n
				}
				switch out.kind {
				case "accepted":
					res.Accepted++
				case "rejected":
					res.Rejected++
				case "invalid":
					res.Invalid++
					res.Errors["invalid: "+out.detail]++
				default:
					res.Unknown++
				}
				if out.kind == "accepted" || out.kind == "rejected" {
					res.Latencies = append(res.Latencies, out.latency)
					res.Acks = append(res.Acks, out.ack)
				}
				mu.Unlock()
				if out.kind == "accepted" && out.ack.Status == recpb.OrderStatus_OPEN && rng.Float64() < cfg.CancelShare {
					if cancelOrder(ctx, cfg, out.ack.OrderID, o.Participant) {
						mu.Lock()
						res.Cancelled++
						mu.Unlock()
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(stopProgress)
	pwg.Wait()
	if cfg.Progress != nil {
		fmt.Fprintln(cfg.Progress)
	}
	res.Elapsed = time.Since(start)
	return res, ctx.Err()
}

func randomOrder(rng *mrand.Rand, cfg Config) gateway.OrderRequest {
	m := cfg.Markets[rng.IntN(len(cfg.Markets))]
	side := "buy"
	if rng.IntN(2) == 0 {
		side = "sell"
	}
	spread := float64(cfg.MidCents) * 0.15
	price := cfg.MidCents + int64((rng.Float64()*2-1)*spread)
	return gateway.OrderRequest{
		Participant:  cfg.Participants[rng.IntN(len(cfg.Participants))],
		EnergySource: m.GetEnergySource(), Vintage: m.GetVintage(),
		Side: side, PriceCents: price, MWh: 1 + rng.Int64N(cfg.MaxMWh),
	}
}

type outcome struct {
	kind     string // accepted, rejected, invalid, unknown
	detail   string
	ack      platform.Ack
	attempts int
	errs     map[string]int
	latency  time.Duration
}

// NewKey returns a random idempotency key.
func NewKey() string {
	var b [16]byte
	rand.Read(b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func place(ctx context.Context, cfg Config, o gateway.OrderRequest) outcome {
	body, _ := json.Marshal(o)
	key := NewKey()
	out := outcome{errs: map[string]int{}}
	start := time.Now()
	backoff := 50 * time.Millisecond
	for {
		out.attempts++
		code, order, detail, err := post(ctx, cfg, key, body)
		switch {
		case err == nil && (code == http.StatusCreated || code == http.StatusUnprocessableEntity) && order != nil:
			out.kind = "accepted"
			if order.Status == "REJECTED" {
				out.kind = "rejected"
			}
			out.ack = platform.Ack{OrderID: order.OrderID, Status: recpb.OrderStatus(recpb.OrderStatus_value[order.Status]), Filled: order.FilledMWh, Fills: len(order.Fills)}
			out.latency = time.Since(start)
			return out
		case err == nil && !gateway.IsRetryable(code):
			out.kind, out.detail = "invalid", fmt.Sprintf("%d %s", code, detail)
			return out
		case err != nil:
			out.errs["transport"]++
		case code == http.StatusConflict:
			out.errs["409 in flight"]++
		default:
			out.errs[fmt.Sprint(code)]++
		}
		if time.Since(start) > cfg.RetryFor || ctx.Err() != nil {
			out.kind = "unknown"
			return out
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// orderJSON is the part of the gateway's order the client reads.
type orderJSON struct {
	OrderID   string            `json:"order_id"`
	Status    string            `json:"status"`
	FilledMWh int64             `json:"filled_mwh,string"`
	Fills     []json.RawMessage `json:"fills"`
}

func post(ctx context.Context, cfg Config, key string, body []byte) (int, *orderJSON, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.URL+"/v1/orders", bytes.NewReader(body))
	if err != nil {
		return 0, nil, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := cfg.Client.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, "", err
	}
	var o orderJSON
	if json.Unmarshal(b, &o) != nil || o.OrderID == "" {
		return resp.StatusCode, nil, strings.TrimSpace(string(b)), nil
	}
	return resp.StatusCode, &o, "", nil
}

func cancelOrder(ctx context.Context, cfg Config, id, participant string) bool {
	for range 10 {
		req, err := http.NewRequestWithContext(ctx, http.MethodDelete, cfg.URL+"/v1/orders/"+id+"?participant="+participant, nil)
		if err != nil {
			return false
		}
		resp, err := cfg.Client.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
			if !gateway.IsRetryable(resp.StatusCode) {
				return false
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(200 * time.Millisecond):
		}
	}
	return false
}
