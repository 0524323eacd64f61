package telemetry

import (
	"crypto/tls"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// HTTPHandler records every request next serves in m, as ServerInterceptors
// do for gRPC: mesh.rpc.requests and mesh.rpc.duration labelled with the
// caller's SPIFFE ID (from the verified client certificate), self, and as
// method "METHOD PATTERN" (the ServeMux pattern that matched, or just the
// HTTP method, never the raw path, whose values are unbounded) and as code
// the HTTP status. Put it outside the authorization so refusals count;
// the pattern is only known when no layer between here and the ServeMux
// copies the request (r.WithContext does), else the method alone is used.
// Off means off: with no SDK provider and no event sink it
// adds one check per request.
func HTTPHandler(m *Metrics, self string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !m.active() {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		m.RecordCall(Event{
			Time: start, Side: "server", Source: tlsPeerID(r.TLS), Peer: self, Method: httpMethod(r),
			Code: strconv.Itoa(sw.code), Duration: time.Since(start),
		})
	})
}

// HTTPTransport records every request sent through next in m, labelled
// with self, target (the request's URL host when "") and the SPIFFE ID the
// server presented.
func HTTPTransport(m *Metrics, self, target string, next http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		if !m.active() {
			return next.RoundTrip(r)
		}
		start := time.Now()
		resp, err := next.RoundTrip(r)
		e := Event{Time: start, Side: "client", Source: self, Target: target, Method: httpMethod(r), Duration: time.Since(start)}
		if e.Target == "" {
			e.Target = r.URL.Host
		}
		if err != nil {
			e.Code, e.Detail = "error", err.Error()
		} else {
			e.Code, e.Peer = strconv.Itoa(resp.StatusCode), tlsPeerID(resp.TLS)
			if resp.Request != nil && resp.Request.URL != nil {
				e.Endpoint = resp.Request.URL.Host
			}
		}
		m.RecordCall(e)
		return resp, err
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func httpMethod(r *http.Request) string {
	switch {
	case r.Pattern == "":
		return r.Method
	case strings.Contains(r.Pattern, " "): // "GET /certs/{id}" names its method
		return r.Pattern
	default:
		return r.Method + " " + r.Pattern
	}
}

func tlsPeerID(st *tls.ConnectionState) string {
	if st == nil || len(st.PeerCertificates) == 0 {
		return ""
	}
	for _, u := range st.PeerCertificates[0].URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return ""
}

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
