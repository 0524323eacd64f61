package resilience

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/failsafe-go/failsafe-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

// UnaryClientInterceptor returns the interceptor that applies the policy of
// the call's destination (cc.Target()) and method. Install it first in the
// chain (outermost) so that each of its attempts runs the inner
// interceptors, e.g. the OpenTelemetry stats handler sees every attempt.
//
// The ClientConn should be dialed with grpc.WithDisableRetry(): grpc-go's
// own retries (from a service config or xDS) would stack on these and hide
// from this interceptor whether an earlier attempt was sent. grpc-go's
// transparent retries of streams that never left the client stay on.
func (c *Client) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return c.unary
}

func (c *Client) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	d := c.destination(cc.Target())
	err := c.unaryCall(ctx, d, method, req, reply, cc, invoker, opts)
	d.callEnded(grpcCallFailed(err))
	return err
}

// grpcCallFailed says whether a call's final error counts against its
// destination's consecutive-failure rule.
func grpcCallFailed(err error) bool {
	return err != nil && breakerFailure(status.Code(err)) && !isRejected(err)
}

func (c *Client) unaryCall(ctx context.Context, d *destination, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	ms := d.resolve(method)
	lvl := ms.declared
	if lvl == IdempotencyUnknown {
		lvl = c.levels.level(method)
	}
	keyed := hasOutgoingKey(ctx)

	if ms.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ms.timeout)
		defer cancel()
	}
	d.budget.deposit()

	_, isProto := reply.(proto.Message)
	hedge := ms.hedgePolicy != nil && lvl == NoSideEffects && isProto
	exec := ms.executor(hedge)
	if exec == nil {
		err := c.unaryAttempt(ctx, ctx, d, ms, method, lvl, keyed, req, reply, cc, invoker, opts)
		return unwrapResult(err)
	}

	// Fast path: without hedging, the first attempt needs nothing from the
	// retry policy, so it runs here and most calls end with it. Only a
	// retryable failure starts the executor, which is handed the first
	// attempt's outcome (see replayFirst) and carries on from there exactly
	// as if it had run that attempt itself.
	var firstErr error
	if !hedge && !c.noFastPath {
		firstErr = c.unaryAttempt(ctx, ctx, d, ms, method, lvl, keyed, req, reply, cc, invoker, opts)
		if done, err := firstAttemptFinal(ctx, firstErr); done {
			return grpcError(unwrapResult(err))
		}
	}

	// Declared here, not above, so that the fast path does not allocate
	// what the closure captures.
	first := firstErr
	st := &unaryState{}
	_, err := exec.WithContext(ctx).GetWithExecution(func(e failsafe.Execution[any]) (any, error) {
		if err, ok := replayFirst(e, &first); ok {
			st.log.set(err)
			return nil, err
		}
		if !st.group.enter() {
			return nil, errCallDone
		}
		defer st.group.exit()
		if err := c.gate(d, method, e.IsHedge(), e.IsRetry(), e.Attempts(), &st.log); err != nil {
			return nil, err
		}
		out := reply
		if hedge {
			// Concurrent attempts must not decode into one message.
			out = reply.(proto.Message).ProtoReflect().New().Interface()
		}
		err := c.unaryAttempt(ctx, e.Context(), d, ms, method, lvl, keyed, req, out, cc, invoker, opts)
		if err != nil {
			st.log.set(err)
		} else if hedge {
			st.winMu.Lock()
			if st.winner == nil {
				st.winner = out.(proto.Message)
			}
			st.winMu.Unlock()
		}
		return nil, err
	})
	// Hedged losers were canceled by the hedge policy; wait for them so that
	// no attempt outlives the call.
	st.group.finish()
	if err == nil && hedge && st.winner != nil {
		proto.Reset(reply.(proto.Message))
		proto.Merge(reply.(proto.Message), st.winner)
	}
	return grpcError(unwrapResult(err))
}

// unaryState is the state shared by the attempts of one call, in one
// allocation.
type unaryState struct {
	log    attemptLog
	group  attemptGroup
	winMu  sync.Mutex
	winner proto.Message
}

// unaryAttempt sends one attempt. It returns the attempt's error, marked
// retryable when the rules allow a retry.
func (c *Client) unaryAttempt(callCtx, ctx context.Context, d *destination, ms *methodState, method string, lvl Idempotency, keyed bool, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	pm, err := d.admit(ctx, c, method)
	if err != nil {
		return err
	}
	actx := ctx
	if t := ms.retry.PerTryTimeout; t > 0 {
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	ao := newAttemptOpts(opts)
	err = invoker(actx, method, req, reply, cc, ao.opts...)
	p := &ao.peer
	if err == nil {
		pm.release(false, false)
		return nil
	}
	code := status.Code(err)
	canceled := ctx.Err() != nil && code != codes.DeadlineExceeded || code == codes.Canceled
	pm.release(breakerFailure(code) && !canceled, canceled)
	if callCtx.Err() != nil || ctx.Err() != nil {
		return err // the caller's deadline, a cancel, or a hedge loser
	}
	// The server, told the same deadline, may answer DEADLINE_EXCEEDED a
	// moment before the client's timer fires: with a per-try timeout set
	// and the call's own deadline not passed, that is the per-try timeout.
	perTryExpired := ms.retry.PerTryTimeout > 0 && code == codes.DeadlineExceeded
	if retryableGRPC(code, p.Addr == nil, perTryExpired, lvl, keyed) {
		return &retryableError{err}
	}
	return err
}

// attemptOpts holds, in one allocation, an attempt's call options: the
// caller's, then grpc.Peer recording where the attempt went (no peer means
// it never got a transport stream: see retryableGRPC).
type attemptOpts struct {
	peer peer.Peer
	opts []grpc.CallOption
	buf  [4]grpc.CallOption
}

// newAttemptOpts copies opts and adds the peer option. Each attempt gets
// its own copy: hedges run concurrently and must not append into the
// caller's backing array.
func newAttemptOpts(opts []grpc.CallOption) *attemptOpts {
	a := &attemptOpts{}
	if len(opts) < len(a.buf) {
		a.opts = a.buf[:0]
	}
	a.opts = append(append(a.opts, opts...), grpc.Peer(&a.peer))
	return a
}

// retryableGRPC is the retry rule for gRPC.
//
// Any call is retried on UNAVAILABLE when the attempt never got a transport
// stream (no peer was recorded): the picker failed it, e.g. every connection
// was refused or the channel was in TRANSIENT_FAILURE, so no byte reached a
// server. Streams that got a transport but were refused before processing
// (REFUSED_STREAM, GOAWAY above the last stream id) are already retried
// transparently by grpc-go. UNAVAILABLE after a transport was assigned proves
// nothing: the connection may have dropped after the server committed.
//
// Idempotent, no-side-effect and keyed calls are also retried on UNAVAILABLE
// and on their per-try timeout; keyed calls also on ABORTED, which the
// idempotency middleware returns while the first copy is still in flight.
// Nothing is retried after the call's own deadline or a cancel.
func retryableGRPC(code codes.Code, neverSent, perTryExpired bool, lvl Idempotency, keyed bool) bool {
	if code == codes.Unavailable && neverSent {
		return true
	}
	if lvl == IdempotencyUnknown && !keyed {
		return false
	}
	switch code {
	case codes.Unavailable:
		return true
	case codes.DeadlineExceeded:
		return perTryExpired
	case codes.Aborted:
		return keyed
	}
	return false
}

// breakerFailure says whether a code counts against the destination.
func breakerFailure(code codes.Code) bool {
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Internal, codes.Unknown, codes.DataLoss, codes.ResourceExhausted:
		return true
	}
	return false
}

// grpcError makes context errors from the retry loop into status errors.
func grpcError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return status.FromContextError(err).Err()
	}
	return err
}

// hasOutgoingKey reports whether ctx's outgoing metadata has an
// idempotency key. metadata.FromOutgoingContext would copy all of the
// metadata on every call, and with telemetry on every call has some
// (traceparent); ValueFromOutgoingContext copies only a key that is there.
func hasOutgoingKey(ctx context.Context) bool {
	return len(metadata.ValueFromOutgoingContext(ctx, idempotency.MetadataKey)) > 0
}

// WithIdempotencyKey returns ctx with key attached to outgoing gRPC metadata
// as "idempotency-key". A keyed call may be retried after it reached the
// server; the server's idempotency middleware makes the repeat harmless.
// Use a fresh random key per logical operation (a UUID), and the same key
// when the application itself repeats that operation.
func WithIdempotencyKey(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, idempotency.MetadataKey, key)
}

// StreamClientInterceptor returns the interceptor for streams. A stream
// takes the destination's breaker, bulkhead and rate limit for its whole
// life and reports its outcome to the breaker when it ends. Opening the
// stream is retried only when it provably never left the client; an open
// stream is never retried (its messages may have been processed) nor hedged.
// Policy.Timeout does not apply: streams live as long as their context.
// A stream ends for these purposes when RecvMsg returns an error (io.EOF
// included) or its context ends; as grpc-go itself requires, read it to the
// end or cancel its context, or its bulkhead slot is held.
func (c *Client) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return c.stream
}

func (c *Client) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	d := c.destination(cc.Target())
	cs, err := c.openStream(ctx, d, desc, cc, method, streamer, opts)
	if err != nil {
		d.callEnded(grpcCallFailed(err))
	}
	return cs, err
}

// openStream opens a stream under the destination's policy; the stream's
// own end is reported by trackedStream.
func (c *Client) openStream(ctx context.Context, d *destination, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts []grpc.CallOption) (grpc.ClientStream, error) {
	ms := d.resolve(method)
	d.budget.deposit()
	var log attemptLog
	var cs grpc.ClientStream
	attempt := func(e failsafe.Execution[any]) (any, error) {
		if e != nil {
			if err := c.gate(d, method, false, e.IsRetry(), e.Attempts(), &log); err != nil {
				return nil, err
			}
		}
		pm, err := d.admit(ctx, c, method)
		if err != nil {
			return nil, err
		}
		ao := newAttemptOpts(opts)
		s, err := streamer(ctx, desc, cc, method, ao.opts...)
		p := &ao.peer
		if err != nil {
			code := status.Code(err)
			canceled := ctx.Err() != nil
			pm.release(breakerFailure(code) && !canceled, canceled)
			log.set(err)
			// Same proof as for unary calls: no transport stream, never sent.
			if code == codes.Unavailable && !canceled && p.Addr == nil {
				return nil, &retryableError{err}
			}
			return nil, err
		}
		cs = newTrackedStream(ctx, desc, s, pm)
		return nil, nil
	}
	if ms.retryExec == nil {
		if _, err := attempt(nil); err != nil {
			return nil, grpcError(unwrapResult(err))
		}
		return cs, nil
	}
	// The first attempt runs without the retry policy (see unary); the
	// policy's executor, shared by all calls of the method, takes over only
	// after a retryable failure.
	var firstErr error
	if !c.noFastPath {
		_, firstErr = attempt(nil)
		if done, err := firstAttemptFinal(ctx, firstErr); done {
			if err != nil {
				return nil, grpcError(unwrapResult(err))
			}
			return cs, nil
		}
	}
	first := firstErr
	_, err := ms.retryExec.WithContext(ctx).GetWithExecution(func(e failsafe.Execution[any]) (any, error) {
		if err, ok := replayFirst(e, &first); ok {
			return nil, err
		}
		return attempt(e)
	})
	if err != nil {
		return nil, grpcError(unwrapResult(err))
	}
	return cs, nil
}

// trackedStream reports a stream's end to admit's done func exactly once:
// when RecvMsg returns an error (io.EOF is success), or when ctx ends.
type trackedStream struct {
	grpc.ClientStream
	once          sync.Once
	serverStreams bool
	pm            permit
	stop          func() bool
}

func newTrackedStream(ctx context.Context, desc *grpc.StreamDesc, s grpc.ClientStream, pm permit) *trackedStream {
	t := &trackedStream{ClientStream: s, pm: pm, serverStreams: desc.ServerStreams}
	t.stop = context.AfterFunc(ctx, func() { t.finish(nil, true) })
	return t
}

func (t *trackedStream) finish(err error, ctxDone bool) {
	t.once.Do(func() {
		if !ctxDone {
			t.stop()
		}
		code := status.Code(err)
		canceled := ctxDone || code == codes.Canceled
		failed := err != nil && breakerFailure(code)
		t.pm.release(failed, canceled)
		if !canceled {
			t.pm.d.callEnded(failed)
		}
	})
}

func (t *trackedStream) RecvMsg(m any) error {
	err := t.ClientStream.RecvMsg(m)
	if err == io.EOF {
		t.finish(nil, false)
	} else if err != nil {
		t.finish(err, false)
	} else if !t.serverStreams {
		// One response message ends a unary-response stream; grpc-go has
		// already read the trailers.
		t.finish(nil, false)
	}
	return err
}
