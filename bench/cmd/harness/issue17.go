package main

import "fmt"

// issue17Targets evaluates issue 17's targets (telemetry at mesh speed) on
// the scenarios that ran, for gRPC and for HTTP: with metrics on every
// call and 1% of traces, against static TLS; with every call traced,
// against static TLS and the sidecar; with OTel never set up, against the
// like-for-like static TLS baseline (three backends for gRPC, one for
// HTTP, where every scenario has one).
func issue17Targets(by map[string]*summary) []target {
	var out []target
	x := func(a, b float64) string { return fmt.Sprintf("%.2fx", a/b) }
	for _, s := range []struct{ proto, b, b3, nootel, full, pct, sidecar string }{
		{"gRPC", "b-tls", "b-tls-3", "c-nootel", "c-full", "c-full-1pct", "d-sidecar"},
		{"HTTP", "h-b-tls", "h-b-tls", "h-c-nootel", "h-c-full", "h-c-full-1pct", "h-d-sidecar"},
	} {
		b := by[s.b]
		if b == nil {
			continue
		}
		if c := by[s.pct]; c != nil {
			out = append(out,
				target{fmt.Sprintf("%s %s vs %s: max throughput >= 0.80x", s.proto, s.pct, s.b), x(c.MaxRPS, b.MaxRPS), c.MaxRPS >= 0.80*b.MaxRPS},
				target{fmt.Sprintf("%s %s vs %s: p99 at 1,000/s <= 1.25x", s.proto, s.pct, s.b), x(c.P99, b.P99), c.P99 <= 1.25*b.P99},
				target{fmt.Sprintf("%s %s vs %s: CPU per request at the maximum <= 1.30x", s.proto, s.pct, s.b), x(c.CPUPerReqMax, b.CPUPerReqMax), c.CPUPerReqMax <= 1.30*b.CPUPerReqMax},
			)
		}
		if c := by[s.full]; c != nil {
			out = append(out, target{fmt.Sprintf("%s %s vs %s: max throughput >= 0.55x", s.proto, s.full, s.b), x(c.MaxRPS, b.MaxRPS), c.MaxRPS >= 0.55*b.MaxRPS})
			if d := by[s.sidecar]; d != nil {
				out = append(out,
					target{fmt.Sprintf("%s %s vs %s: more max throughput", s.proto, s.full, s.sidecar), fmt.Sprintf("%.0f vs %.0f rps (%s)", c.MaxRPS, d.MaxRPS, x(c.MaxRPS, d.MaxRPS)), c.MaxRPS > d.MaxRPS},
					target{fmt.Sprintf("%s %s vs %s: less CPU per request at the maximum", s.proto, s.full, s.sidecar), fmt.Sprintf("%.1f vs %.1f µs (%s)", c.CPUPerReqMax, d.CPUPerReqMax, x(c.CPUPerReqMax, d.CPUPerReqMax)), c.CPUPerReqMax < d.CPUPerReqMax},
				)
			}
		}
		if c, b3 := by[s.nootel], by[s.b3]; c != nil && b3 != nil {
			out = append(out, target{fmt.Sprintf("%s %s vs %s: max throughput >= 0.90x", s.proto, s.nootel, s.b3), x(c.MaxRPS, b3.MaxRPS), c.MaxRPS >= 0.90*b3.MaxRPS})
		}
	}
	return out
}
