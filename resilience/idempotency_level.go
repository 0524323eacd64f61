package resilience

import (
	"fmt"
	"net/http"
	"strings"
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Idempotency is what a method declares about its side effects, mirroring
// the proto option idempotency_level (google/protobuf/descriptor.proto).
// The zero value is IdempotencyUnknown: a write that must not be repeated.
type Idempotency int

const (
	// IdempotencyUnknown is a method that may change state each time it
	// runs. It is retried only when the server provably never saw it, or
	// when the request carries an idempotency key. It is never hedged.
	IdempotencyUnknown Idempotency = iota
	// Idempotent is a method whose repeats have the effect of one call
	// (a PUT). It is retried, never hedged.
	Idempotent
	// NoSideEffects is a read. It is retried, and hedged when Hedge is set.
	NoSideEffects
)

var idempotencyNames = [...]string{"IDEMPOTENCY_UNKNOWN", "IDEMPOTENT", "NO_SIDE_EFFECTS"}

// String returns the proto enum name, e.g. "NO_SIDE_EFFECTS".
func (i Idempotency) String() string {
	if i < 0 || int(i) >= len(idempotencyNames) {
		return fmt.Sprintf("Idempotency(%d)", int(i))
	}
	return idempotencyNames[i]
}

// MarshalText implements encoding.TextMarshaler with the proto enum names.
func (i Idempotency) MarshalText() ([]byte, error) { return []byte(i.String()), nil }

// UnmarshalText accepts the proto enum names, case-insensitively.
func (i *Idempotency) UnmarshalText(b []byte) error {
	for n, name := range idempotencyNames {
		if strings.EqualFold(string(b), name) {
			*i = Idempotency(n)
			return nil
		}
	}
	return fmt.Errorf("resilience: idempotency %q: want IDEMPOTENCY_UNKNOWN, IDEMPOTENT or NO_SIDE_EFFECTS", b)
}

// DescriptorResolver finds descriptors by full name; *protoregistry.Files
// implements it. The default is protoregistry.GlobalFiles, where generated
// code registers its files.
type DescriptorResolver interface {
	FindDescriptorByName(protoreflect.FullName) (protoreflect.Descriptor, error)
}

// protoLevels caches the idempotency_level of gRPC methods.
type protoLevels struct {
	files DescriptorResolver
	cache sync.Map // full method -> Idempotency
}

// level returns the idempotency_level declared on the proto method
// "/pkg.Service/Method", or IdempotencyUnknown if it is not registered.
func (l *protoLevels) level(fullMethod string) Idempotency {
	if v, ok := l.cache.Load(fullMethod); ok {
		return v.(Idempotency)
	}
	lvl := IdempotencyUnknown
	svc, method, ok := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	if ok {
		if d, err := l.files.FindDescriptorByName(protoreflect.FullName(svc)); err == nil {
			if sd, ok := d.(protoreflect.ServiceDescriptor); ok {
				if md := sd.Methods().ByName(protoreflect.Name(method)); md != nil {
					if opts, ok := md.Options().(*descriptorpb.MethodOptions); ok {
						switch opts.GetIdempotencyLevel() {
						case descriptorpb.MethodOptions_NO_SIDE_EFFECTS:
							lvl = NoSideEffects
						case descriptorpb.MethodOptions_IDEMPOTENT:
							lvl = Idempotent
						}
					}
				}
			}
		}
	}
	// Method names come from the client's own stubs, so the cache is bounded.
	l.cache.Store(fullMethod, lvl)
	return lvl
}

var _ DescriptorResolver = (*protoregistry.Files)(nil)

// httpLevel is what RFC 9110 lets a client assume. Like net/http's own
// retry rule (Transport), only the safe methods count: PUT and DELETE are
// idempotent by the RFC but too often not in practice to bet money on.
// Declare them in MethodPolicy.Idempotency where they really are.
func httpLevel(method string) Idempotency {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return NoSideEffects
	}
	return IdempotencyUnknown
}
