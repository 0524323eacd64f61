package meshtel

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// HTTPHandler records every request next serves, as ServerInterceptors
// do for gRPC: http.server.request.duration labelled with the caller's
// SPIFFE ID, Self, http.request.method (unknown methods as "_OTHER") and
// http.route (the ServeMux pattern that matched, never the raw path,
// whose values are unbounded; "" when no pattern matched or a layer
// between here and the mux copied the request), and the status. Put it
// outside the authorization so refusals count.
func (p *Pipeline) HTTPHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !p.records() { // pass W3C context on only
			in := Incoming{Traceparent: r.Header.Get("Traceparent"), Tracestate: r.Header.Get("Tracestate"), Baggage: r.Header.Get("Baggage")}
			if in != (Incoming{}) {
				if ctx, _ := p.Tracing.ServerStart(r.Context(), in, "", trace.SpanKindServer, nil); ctx != r.Context() {
					r = r.WithContext(ctx)
				}
			}
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		method := httpMethod(r.Method)
		var span trace.Span
		in := Incoming{Traceparent: r.Header.Get("Traceparent"), Tracestate: r.Header.Get("Tracestate"), Baggage: r.Header.Get("Baggage")}
		if in != (Incoming{}) || p.Tracing != nil {
			// The span's attributes are set when it ends, all in one call.
			ctx, s := p.Tracing.ServerStart(r.Context(), in, method, trace.SpanKindServer, nil)
			if ctx != r.Context() {
				r = r.WithContext(ctx)
			}
			span = s
		}
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		d := time.Since(start)
		route := httpRoute(r.Pattern)
		var sc trace.SpanContext
		if span != nil {
			sc = span.SpanContext()
			kvs := make([]attribute.KeyValue, 0, 5)
			kvs = append(kvs, attribute.String("http.request.method", method), KeySource.String(p.peer(r)), KeyDestination.String(p.Self),
				attribute.Int("http.response.status_code", sw.code))
			if route != "" {
				span.SetName(method + " " + route)
				kvs = append(kvs, attribute.String("http.route", route))
			}
			span.SetAttributes(kvs...)
			if sw.code >= 500 {
				span.SetStatus(codes.Error, "")
			}
			span.End()
		}
		if p.Hub == nil && !p.events() {
			return
		}
		src := p.peer(r)
		if p.Hub != nil {
			p.Hub.HTTPServer.Series(Key{Method: method, Route: route, Code: sw.code, Source: src, Destination: p.Self}).Observe(d, sc)
		}
		if p.events() {
			p.Recorder.RecordCall(Event{Time: start, Side: "server", Source: src, Peer: p.Self, Method: eventMethod(r),
				Code: strconv.Itoa(sw.code), Duration: d})
		}
	})
}

// httpRoute is http.route for a ServeMux pattern: the path part
// ("GET /v1/trades/{id}" -> "/v1/trades/{id}").
func httpRoute(pattern string) string {
	if i := strings.IndexByte(pattern, ' '); i >= 0 {
		return strings.TrimLeft(pattern[i+1:], " \t")
	}
	return pattern
}

func (p *Pipeline) peer(r *http.Request) string {
	if p.Hub != nil {
		return p.Hub.TLSPeerID(r.TLS)
	}
	var h Hub
	return h.TLSPeerID(r.TLS)
}

func eventMethod(r *http.Request) string {
	switch {
	case r.Pattern == "":
		return r.Method
	case len(r.Pattern) > 0 && r.Pattern[0] != '/': // "GET /certs/{id}" names its method
		return r.Pattern
	default:
		return r.Method + " " + r.Pattern
	}
}

// HTTPCalls is the client's call stage: one record per request whatever
// the attempts beneath (http.client.request.duration), labelled with Self,
// target (the request's URL host when "") and the SPIFFE ID the server
// presented; a traced request gets a client span, and the W3C context
// goes on either way.
func (p *Pipeline) HTTPCalls(target string, next http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		if !p.records() { // pass W3C context on only
			return next.RoundTrip(withHeaders(r, trace.SpanContext{}))
		}
		start := time.Now()
		method := httpMethod(r.Method)
		tgt := target
		if tgt == "" {
			tgt = r.URL.Host
		}
		var span trace.Span
		if sampled, ctx := p.Tracing.ClientDecision(r.Context()); sampled {
			// The span's attributes are set when it ends, all in one call.
			ctx, span = p.Tracing.Start(ctx, method, trace.SpanKindClient)
			if span != nil {
				r = r.WithContext(context.WithValue(ctx, callStateKey{}, &callState{}))
			} else {
				r = r.WithContext(ctx)
			}
		} else if ctx != r.Context() {
			r = r.WithContext(ctx)
		}
		if span == nil {
			r = withHeaders(r, trace.SpanContext{})
		}
		resp, err := next.RoundTrip(r)
		d := time.Since(start)
		k := Key{Method: method, Source: p.Self, Target: tgt}
		if err != nil {
			k.Status = errorType(err)
		} else {
			k.Code, k.Destination = resp.StatusCode, p.peerResp(resp)
		}
		var sc trace.SpanContext
		if span != nil {
			sc = span.SpanContext()
			endHTTPSpan(span, k, err, attribute.String("http.request.method", method), KeySource.String(p.Self), KeyTarget.String(tgt))
		}
		if p.Hub != nil {
			p.Hub.HTTPClient.Series(k).Observe(d, sc)
		}
		if p.events() {
			e := Event{Time: start, Side: "client", Source: p.Self, Target: tgt, Method: eventMethod(r), Duration: d, Peer: k.Destination}
			if err != nil {
				e.Code, e.Detail = "error", err.Error()
			} else {
				e.Code = strconv.Itoa(resp.StatusCode)
				if resp.Request != nil && resp.Request.URL != nil {
					e.Endpoint = resp.Request.URL.Host
				}
			}
			p.Recorder.RecordCall(e)
		}
		return resp, err
	})
}

// HTTPAttempts is the client's attempt stage, beneath resilience: it
// counts each attempt (mesh.http.client.attempts) and gives a traced
// request's attempts their spans, whose context goes to the server.
func (p *Pipeline) HTTPAttempts(target string, next http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		var (
			span trace.Span
			n    int
			kind string
		)
		method := httpMethod(r.Method)
		if cs, _ := r.Context().Value(callStateKey{}).(*callState); cs != nil {
			n, kind = cs.next()
			defer cs.done()
			var ctx context.Context
			// The span's attributes are set when it ends, all in one call.
			ctx, span = p.Tracing.Start(r.Context(), "attempt "+method, trace.SpanKindInternal)
			r = withHeaders(r.WithContext(ctx), trace.SpanContextFromContext(ctx))
		}
		if span == nil && p.Hub == nil {
			return next.RoundTrip(r)
		}
		resp, err := next.RoundTrip(r)
		tgt := target
		if tgt == "" {
			tgt = r.URL.Host
		}
		k := Key{Method: method, Source: p.Self, Target: tgt}
		if err != nil {
			k.Status = errorType(err)
		} else {
			k.Code, k.Destination = resp.StatusCode, p.peerResp(resp)
		}
		if span != nil {
			var route, cluster string
			if p.Routed != nil {
				route, cluster = p.Routed(r.Context())
			}
			attempt, attemptKind, addr := KeyAttempt.Int(n), KeyAttemptKind.String(kind), attribute.String("server.address", r.URL.Host)
			if route != "" || cluster != "" {
				endHTTPSpan(span, k, err, attempt, attemptKind, addr, KeyRoute.String(route), KeyCluster.String(cluster))
			} else {
				endHTTPSpan(span, k, err, attempt, attemptKind, addr)
			}
		}
		if p.Hub != nil {
			p.Hub.HTTPAttempts.Series(k).Add()
		}
		return resp, err
	})
}

// endHTTPSpan ends a client span with its outcome and the attributes
// extra, set in one call: the SDK grows a span's attributes at each call.
func endHTTPSpan(span trace.Span, k Key, err error, extra ...attribute.KeyValue) {
	kvs := make([]attribute.KeyValue, 0, len(extra)+2)
	kvs = append(append(kvs, extra...), KeyDestination.String(k.Destination))
	if err != nil {
		span.SetAttributes(append(kvs, attribute.String("error.type", k.Status))...)
		span.SetStatus(codes.Error, err.Error())
	} else {
		span.SetAttributes(append(kvs, attribute.Int("http.response.status_code", k.Code))...)
		if k.Code >= 500 {
			span.SetStatus(codes.Error, "")
		}
	}
	span.End()
}

func (p *Pipeline) peerResp(resp *http.Response) string {
	if p.Hub != nil {
		return p.Hub.TLSPeerID(resp.TLS)
	}
	var h Hub
	return h.TLSPeerID(resp.TLS)
}

// withHeaders returns r with the W3C headers to send: sc's when valid,
// else the context's (Outgoing), and the context's baggage. r itself is
// not changed (a RoundTripper must not modify its request): a copy with
// its own headers is returned when there is anything to send.
func withHeaders(r *http.Request, sc trace.SpanContext) *http.Request {
	ctx := r.Context()
	var tp, ts string
	var ok bool
	if sc.IsValid() {
		tp, ts, ok = FormatTraceparent(sc), sc.TraceState().String(), true
	} else {
		tp, ts, ok = Outgoing(ctx)
	}
	b := baggage.FromContext(ctx)
	if !ok && b.Len() == 0 {
		return r
	}
	out := *r
	out.Header = r.Header.Clone()
	if out.Header == nil {
		out.Header = http.Header{}
	}
	if ok {
		out.Header.Set("Traceparent", tp)
		if ts != "" {
			out.Header.Set("Tracestate", ts)
		} else {
			out.Header.Del("Tracestate")
		}
	}
	if b.Len() > 0 {
		out.Header.Set("Baggage", b.String())
	}
	return &out
}

// errorType is error.type for a request that got no response, from a
// bounded set.
func errorType(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "_OTHER"
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// statusWriter remembers the status code. It passes Flush through and
// exposes the original writer to http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
