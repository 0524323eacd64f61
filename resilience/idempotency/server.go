package idempotency

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// Where the key travels.
const (
	// MetadataKey is the gRPC metadata key of an idempotency key.
	MetadataKey = "idempotency-key"
	// Header is the HTTP header of an idempotency key
	// (draft-ietf-httpapi-idempotency-key-header).
	Header = "Idempotency-Key"
	// ReplayedMetadataKey and ReplayedHeader mark a response that was
	// served from the Store rather than by the handler.
	ReplayedMetadataKey = "idempotent-replayed"
	ReplayedHeader      = "Idempotent-Replayed"
	// MaxKeyLen is the longest key accepted; longer keys are refused.
	MaxKeyLen = 255
)

// checkKey returns the one idempotency key among values, the values of the
// header or metadata key name, or an error that says what is wrong and the
// expected form. A key is 1 to MaxKeyLen bytes of printable ASCII (space to
// '~'): no NUL (so a caller's scope never runs into its key), no control
// characters that logs or a SQL Store could treat specially, and one value
// only (two are ambiguous: a proxy may keep either).
func checkKey(name string, values []string) (string, error) {
	const form = "send one key of 1 to 255 printable ASCII characters, such as a UUID"
	if len(values) > 1 {
		return "", fmt.Errorf("idempotency: %s appears %d times; %s", name, len(values), form)
	}
	key := values[0]
	switch {
	case key == "":
		return "", fmt.Errorf("idempotency: %s is empty; %s, or none for a request that may run twice", name, form)
	case len(key) > MaxKeyLen:
		return "", fmt.Errorf("idempotency: %s is %d bytes; the limit is %d: %s", name, len(key), MaxKeyLen, form)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c > 0x7e {
			return "", fmt.Errorf("idempotency: %s has byte 0x%02x at offset %d, which is not printable ASCII; %s", name, c, i, form)
		}
	}
	return key, nil
}

// Server is the server-side idempotency middleware, for gRPC
// (UnaryServerInterceptor) and HTTP (Handler). Requests without a key pass
// through untouched. For a keyed request it:
//
//   - refuses a malformed key with INVALID_ARGUMENT / 400: empty, longer
//     than MaxKeyLen, not printable ASCII, or sent more than once;
//   - runs the handler once and stores its result under (caller, key), so
//     one caller's key never matches another's;
//   - returns the stored result for a repeat with the same request, marked
//     "idempotent-replayed: true";
//   - refuses the key with a different request: INVALID_ARGUMENT / 422;
//   - refuses the key while the first request is in flight: ABORTED / 409
//     (the client retries later and then gets the stored result).
//
// Results that by contract committed nothing are not stored, so a retry
// runs the handler again: gRPC CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE,
// ABORTED and RESOURCE_EXHAUSTED; HTTP 408, 425, 429, 502, 503 and 504. A
// handler that returns one of these must not have committed. Other errors
// (INTERNAL, 500 included) are stored like successes.
//
// A Server is safe for concurrent use and starts no goroutines.
type Server struct {
	store   Store
	caller  func(context.Context) string
	files   *protoregistry.Files
	types   *protoregistry.Types
	maxBody int64
}

// Option configures a Server.
type Option interface{ apply(*Server) }

type optionFunc func(*Server)

func (f optionFunc) apply(s *Server) { f(s) }

// WithRegistry sets where the gRPC middleware finds the response type of a
// method to decode a stored response (after a restart, with a persistent
// Store). Default: protoregistry.GlobalFiles and GlobalTypes.
func WithRegistry(files *protoregistry.Files, types *protoregistry.Types) Option {
	return optionFunc(func(s *Server) { s.files, s.types = files, types })
}

// WithMaxBody sets the largest HTTP request body fingerprinted; larger keyed
// requests get 413. Default: 4 MiB.
func WithMaxBody(n int64) Option { return optionFunc(func(s *Server) { s.maxBody = n }) }

// NewServer returns the middleware storing results in store. caller names
// the authenticated caller of a request (the mesh passes its SPIFFE ID), so
// that one caller's keys never match another's; nil means one scope for all.
func NewServer(store Store, caller func(context.Context) string, opts ...Option) *Server {
	if caller == nil {
		caller = func(context.Context) string { return "" }
	}
	s := &Server{store: store, caller: caller, files: protoregistry.GlobalFiles, types: protoregistry.GlobalTypes, maxBody: 4 << 20}
	for _, o := range opts {
		o.apply(s)
	}
	return s
}

// outcome of Claim.
type verdict int

const (
	run verdict = iota
	replay
	mismatch
	inFlight
)

var errStore = errors.New("idempotency: store")

// claim claims key in the caller's scope. The scope and the key are joined
// by a NUL, which checkKey keeps out of keys, so no caller's scoped key
// equals another's whatever the caller strings are.
func (s *Server) claim(ctx context.Context, key string, fp []byte) (string, verdict, *Entry, error) {
	scoped := s.caller(ctx) + "\x00" + key
	e, err := s.store.Claim(ctx, scoped, fp)
	switch {
	case err != nil:
		return scoped, run, nil, fmt.Errorf("%w: claim: %w", errStore, err)
	case e == nil:
		return scoped, run, nil, nil
	case string(e.Fingerprint) != string(fp):
		return scoped, mismatch, e, nil
	case !e.Done:
		return scoped, inFlight, e, nil
	}
	return scoped, replay, e, nil
}

func fingerprint(parts ...[]byte) []byte {
	h := sha256.New()
	for _, p := range parts {
		var n [8]byte
		for i, l := 0, len(p); i < 8; i, l = i+1, l>>8 {
			n[i] = byte(l)
		}
		h.Write(n[:])
		h.Write(p)
	}
	return h.Sum(nil)
}

func releasableGRPC(c codes.Code) bool {
	switch c {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.Aborted, codes.ResourceExhausted:
		return true
	}
	return false
}

func storeErr(err error) error {
	return status.Errorf(codes.Unavailable, "%v", err)
}
