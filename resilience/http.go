package resilience

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go"

	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

// RoundTripper returns an http.RoundTripper that applies the policy of each
// request's destination (req.URL.Host) and "VERB /path" around next; nil next
// means http.DefaultTransport. It is safe for concurrent use.
//
// Retries need a replayable body: none, http.NoBody, or a request with
// GetBody (http.NewRequest sets it for bytes and strings readers); others
// get one attempt. A response the policy retries is drained and closed; the
// last one is returned when the retries run out. Policy.Timeout bounds the
// whole request, reading the body included; Retry.PerTryTimeout bounds each
// attempt until its response headers. HTTP has no standard deadline header,
// so the server is not told the deadline.
func (c *Client) RoundTripper(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return &roundTripper{c: c, next: next}
}

type roundTripper struct {
	c    *Client
	next http.RoundTripper
}

// statusError marks a response the policy would retry.
type statusError struct{ code int }

func (e *statusError) Error() string { return fmt.Sprintf("resilience: HTTP %d", e.code) }

// httpCall is the state of one request across attempts.
type httpCall struct {
	mu    sync.Mutex
	resps []*http.Response // every open response an attempt returned
	last  *http.Response   // the latest of them
}

func (h *httpCall) add(r *http.Response) {
	h.mu.Lock()
	h.resps = append(h.resps, r)
	h.last = r
	h.mu.Unlock()
}

func (h *httpCall) latest() *http.Response {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// closeAllBut closes every response but keep.
func (h *httpCall) closeAllBut(keep *http.Response) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.resps {
		if r != keep {
			drainClose(r)
		}
	}
	h.resps = h.resps[:0]
	if h.last != keep {
		h.last = nil
	}
}

// drainClose reads what is left of r's body, up to 64 KiB so that the
// connection can be reused, and closes it.
func drainClose(r *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 64<<10))
	_ = r.Body.Close()
}

func (t *roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	d := t.c.destination(req.URL.Host)
	resp, err := t.roundTrip(req, d)
	switch {
	case err == nil:
		d.callEnded(httpFailure(resp.StatusCode))
	case req.Context().Err() == nil && !isRejected(err):
		d.callEnded(true)
	}
	return resp, err
}

// httpFailure says whether a response status counts against the
// destination (the HTTP side of breakerFailure): 5xx but 501, which says
// the server works and lacks the method.
func httpFailure(code int) bool {
	return code >= 500 && code != http.StatusNotImplemented
}

func (t *roundTripper) roundTrip(req *http.Request, d *destination) (*http.Response, error) {
	c := t.c
	method := req.Method + " " + req.URL.Path
	ms := d.resolve(method)
	lvl := ms.declared
	if lvl == IdempotencyUnknown {
		lvl = httpLevel(req.Method)
	}
	keyed := req.Header.Get(idempotency.Header) != ""
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil

	ctx := req.Context()
	cancel := context.CancelFunc(func() {})
	if ms.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, ms.timeout)
	}
	d.budget.deposit()

	hedge := ms.hedgePolicy != nil && lvl == NoSideEffects && replayable
	var exec failsafe.Executor[any]
	if replayable {
		exec = ms.executor(hedge)
	}
	if exec == nil {
		resp, err := t.attempt(ctx, req, req.Body, d, ms, method, lvl, keyed)
		if isRetryable(err) && resp != nil {
			err = nil // a response the policy would retry, but it may not: return it
		}
		return finishHTTP(resp, unwrapResult(err), cancel)
	}

	// Fast path: without hedging the first attempt runs outside the
	// executor (see Client.unary); only a retryable failure starts it.
	var (
		firstErr  error
		firstResp *http.Response
	)
	if !hedge && !t.c.noFastPath {
		resp, err := t.attempt(ctx, req, req.Body, d, ms, method, lvl, keyed)
		if done, ferr := firstAttemptFinal(ctx, err); done {
			if ferr != nil && resp != nil {
				// The call's context ended after a response: the executor
				// would have dropped it too.
				drainClose(resp)
				resp = nil
			}
			return finishHTTP(resp, unwrapResult(ferr), cancel)
		}
		firstErr, firstResp = err, resp
	}

	// Declared here, not above, so that the fast path does not allocate
	// what the closure captures.
	var (
		first = firstErr
		log   attemptLog
		group attemptGroup
		call  httpCall
		used  atomic.Bool // the original body went to an attempt
	)
	used.Store(first != nil)
	res, err := exec.WithContext(ctx).GetWithExecution(func(e failsafe.Execution[any]) (any, error) {
		if err, ok := replayFirst(e, &first); ok {
			if firstResp != nil {
				call.add(firstResp)
			}
			log.set(err)
			return firstResp, err
		}
		if !group.enter() {
			return nil, errCallDone
		}
		defer group.exit()
		if err := c.gate(d, method, e.IsHedge(), e.IsRetry(), e.Attempts(), &log); err != nil {
			return nil, err
		}
		if e.IsRetry() && !e.IsHedge() {
			call.closeAllBut(nil) // the retry replaces earlier responses
		}
		body := req.Body
		if body != nil && body != http.NoBody && used.Swap(true) {
			var err error
			if body, err = req.GetBody(); err != nil {
				return nil, fmt.Errorf("resilience: replay request body: %w", err)
			}
		}
		resp, err := t.attempt(e.Context(), req, body, d, ms, method, lvl, keyed)
		if resp != nil {
			call.add(resp)
		}
		if err != nil {
			log.set(err)
		}
		return resp, err
	})
	group.finish()
	resp, _ := res.(*http.Response)
	err = unwrapResult(err)
	var se *statusError
	if errors.As(err, &se) {
		// Retries ran out (or the budget denied one) on a response: return it.
		err = nil
		if resp == nil {
			resp = call.latest()
		}
	}
	if err != nil {
		resp = nil
	}
	call.closeAllBut(resp)
	return finishHTTP(resp, err, cancel)
}

// attempt sends one attempt with body. It returns the response, and an
// error marked retryable when the rules allow a retry.
func (t *roundTripper) attempt(ctx context.Context, req *http.Request, body io.ReadCloser, d *destination, ms *methodState, method string, lvl Idempotency, keyed bool) (*http.Response, error) {
	pm, err := d.admit(ctx, t.c, method)
	if err != nil {
		if body != nil {
			_ = body.Close()
		}
		return nil, err
	}
	// Only a per-try timeout needs a context of the attempt's own: without
	// one the attempt ends with ctx, or when its response body is closed.
	actx, acancel := ctx, context.CancelFunc(nil)
	var expired *atomic.Bool
	var timer *time.Timer
	if pt := ms.retry.PerTryTimeout; pt > 0 {
		actx, acancel = context.WithCancel(ctx)
		expired = new(atomic.Bool)
		timer = time.AfterFunc(pt, func() { expired.Store(true); acancel() })
	}
	r := req.WithContext(actx)
	r.Body = body
	resp, err := t.next.RoundTrip(r)
	if timer != nil {
		timer.Stop()
	}
	if err != nil {
		if acancel != nil {
			acancel()
		}
		canceled := ctx.Err() != nil
		pm.release(!canceled, canceled)
		if ctx.Err() != nil {
			return nil, err
		}
		if retryableHTTPError(err, expired != nil && expired.Load(), lvl, keyed) {
			return nil, &retryableError{err}
		}
		return nil, err
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: acancel}
	pm.release(httpFailure(resp.StatusCode), false)
	if (lvl != IdempotencyUnknown || keyed) && retryableHTTPStatus(resp.StatusCode, keyed) {
		return resp, &retryableError{&statusError{resp.StatusCode}}
	}
	return resp, nil
}

// NotSentError is implemented by transport errors that prove the server
// never saw the request: a failed dial or TLS handshake, an HTTP/2 stream
// the server refused (REFUSED_STREAM) or never processed (above a GOAWAY's
// last stream ID). An error in the chain whose NotSent returns true lets
// any request, a POST without an idempotency key included, be retried: this
// is how the mesh's HTTP transport fails over to another endpoint, since
// the RoundTripper is the one place that resends. An error that only may
// mean the request was lost (EOF, a reset after writing) must not be
// marked.
type NotSentError interface {
	error
	NotSent() bool
}

// retryableHTTPError is the retry rule for transport errors. Any request is
// retried when the connection was never established (a dial error, or a
// NotSentError: nothing was written; net/http itself already replays
// requests on reused connections that died before a byte was written). Idempotent and keyed
// requests are also retried on other transport errors and on their per-try
// timeout, but not on certificate errors, which a retry will not fix.
func retryableHTTPError(err error, perTryExpired bool, lvl Idempotency, keyed bool) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var ns NotSentError
	if errors.As(err, &ns) && ns.NotSent() {
		return true
	}
	if lvl == IdempotencyUnknown && !keyed {
		return false
	}
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verify           *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownAuthority) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify) {
		return false
	}
	return perTryExpired || !errors.Is(err, context.Canceled)
}

// retryableHTTPStatus is the retry rule for responses of idempotent and
// keyed requests: 502, 503, 504 and 429; and 409 for keyed requests, which
// the idempotency middleware returns while the first copy is in flight.
// Other 5xx are not retried: a 500 is more often a bug than a blip.
func retryableHTTPStatus(code int, keyed bool) bool {
	switch code {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout, http.StatusTooManyRequests:
		return true
	case http.StatusConflict:
		return keyed
	}
	return false
}

func finishHTTP(resp *http.Response, err error, cancel context.CancelFunc) (*http.Response, error) {
	if err != nil || resp == nil {
		cancel()
		if err == nil {
			err = errors.New("resilience: no response")
		}
		return nil, err
	}
	if cb, ok := resp.Body.(*cancelBody); ok {
		cb.outer = cancel
	} else {
		resp.Body = &cancelBody{ReadCloser: resp.Body, outer: cancel}
	}
	return resp, nil
}

// cancelBody releases the attempt's and the call's contexts when closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
	outer  context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	if b.cancel != nil {
		b.cancel()
	}
	if b.outer != nil {
		b.outer()
	}
	return err
}
