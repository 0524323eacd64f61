package idempotency

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// Handler returns the HTTP middleware around next. The fingerprint covers
// the method, path, query and body. The response of a keyed request is
// buffered whole (no streaming) so that it can be stored. Install it after
// authentication and authorization.
func (s *Server) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		values := r.Header.Values(Header)
		if len(values) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		key, err := checkKey(Header, values)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var body []byte
		if r.Body != nil {
			body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				http.Error(w, fmt.Sprintf("a request with an Idempotency-Key may have at most %d bytes of body", s.maxBody), http.StatusRequestEntityTooLarge)
				return
			} else if err != nil {
				http.Error(w, "reading request body: "+err.Error(), http.StatusBadRequest)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		fp := fingerprint([]byte(r.Method), []byte(r.URL.Path), []byte(r.URL.RawQuery), body)
		scoped, v, e, err := s.claim(r.Context(), key, fp)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		switch v {
		case mismatch:
			http.Error(w, fmt.Sprintf("Idempotency-Key %q was already used for a different request; use a new key for a new request", key), http.StatusUnprocessableEntity)
			return
		case inFlight:
			w.Header().Set("Retry-After", "1")
			http.Error(w, fmt.Sprintf("a request with Idempotency-Key %q is in flight; retry later to get its result", key), http.StatusConflict)
			return
		case replay:
			writeResult(w, e.Result, true)
			return
		}

		rec := &recorder{header: http.Header{}}
		released := false
		defer func() {
			if !released {
				if p := recover(); p != nil {
					_ = s.store.Release(context.WithoutCancel(r.Context()), scoped)
					panic(p)
				}
			}
		}()
		next.ServeHTTP(rec, r)
		released = true
		if rec.code == 0 {
			rec.code = http.StatusOK
		}
		res := Result{Code: rec.code, Header: rec.header, Body: rec.body.Bytes()}
		sctx := context.WithoutCancel(r.Context())
		if releasableHTTP(rec.code) {
			_ = s.store.Release(sctx, scoped)
		} else {
			_ = s.store.Complete(sctx, scoped, res)
		}
		writeResult(w, res, false)
	})
}

func writeResult(w http.ResponseWriter, r Result, replayed bool) {
	h := w.Header()
	for k, v := range r.Header {
		h[k] = append([]string(nil), v...)
	}
	if replayed {
		h.Set(ReplayedHeader, "true")
	}
	h.Set("Content-Length", strconv.Itoa(len(r.Body)))
	w.WriteHeader(r.Code)
	_, _ = w.Write(r.Body)
}

func releasableHTTP(code int) bool {
	switch code {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// recorder buffers a response.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.body.Write(b)
}
