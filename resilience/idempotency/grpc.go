package idempotency

import (
	"context"
	"fmt"
	"strings"
	"sync"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

var (
	detMarshal = proto.MarshalOptions{Deterministic: true}
	respTypes  sync.Map // full method -> protoreflect.MessageType seen from handlers
)

// UnaryServerInterceptor returns the gRPC middleware. Install it after
// authentication and authorization, so that the caller func can read the
// caller and refused calls claim no key.
func (s *Server) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		values := metadata.ValueFromIncomingContext(ctx, MetadataKey)
		if len(values) == 0 {
			return handler(ctx, req)
		}
		key, err := checkKey(MetadataKey, values)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		msg, ok := req.(proto.Message)
		if !ok {
			return nil, status.Errorf(codes.Internal, "idempotency: request %T of %s is not a proto message", req, info.FullMethod)
		}
		body, err := detMarshal.Marshal(msg)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "idempotency: fingerprint request of %s: %v", info.FullMethod, err)
		}
		fp := fingerprint([]byte(info.FullMethod), body)
		scoped, v, e, err := s.claim(ctx, key, fp)
		if err != nil {
			return nil, storeErr(err)
		}
		switch v {
		case mismatch:
			return nil, status.Errorf(codes.InvalidArgument, "idempotency key %q was already used for a different request; use a new key for a new request", key)
		case inFlight:
			return nil, status.Errorf(codes.Aborted, "a request with idempotency key %q is in flight; retry later to get its result", key)
		case replay:
			_ = grpc.SetHeader(ctx, metadata.Pairs(ReplayedMetadataKey, "true"))
			return s.decode(info.FullMethod, e.Result)
		}

		// Run the handler; release the claim if it panics.
		released := false
		defer func() {
			if !released {
				if r := recover(); r != nil {
					_ = s.store.Release(context.WithoutCancel(ctx), scoped)
					panic(r)
				}
			}
		}()
		resp, herr := handler(ctx, req)
		released = true
		// The caller may be gone; the result must be stored anyway.
		sctx := context.WithoutCancel(ctx)
		st := status.Convert(herr)
		if herr != nil && releasableGRPC(st.Code()) {
			_ = s.store.Release(sctx, scoped)
			return resp, herr
		}
		res := Result{Code: int(st.Code())}
		if herr == nil {
			rm, ok := resp.(proto.Message)
			if !ok {
				// Cannot be stored: keep the claim so that no repeat runs.
				return resp, herr
			}
			respTypes.LoadOrStore(info.FullMethod, rm.ProtoReflect().Type())
			if res.Body, err = proto.Marshal(rm); err != nil {
				return resp, herr
			}
		} else if res.Body, err = proto.Marshal(st.Proto()); err != nil {
			return resp, herr
		}
		// A failed Complete leaves the key in flight: repeats get ABORTED,
		// never a second run. The handler's result still goes back.
		_ = s.store.Complete(sctx, scoped, res)
		return resp, herr
	}
}

func (s *Server) decode(method string, r Result) (any, error) {
	if codes.Code(r.Code) != codes.OK {
		var sp spb.Status
		if err := proto.Unmarshal(r.Body, &sp); err != nil {
			return nil, status.Errorf(codes.Internal, "idempotency: decode stored status of %s: %v", method, err)
		}
		return nil, status.FromProto(&sp).Err()
	}
	mt, err := s.responseType(method)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "idempotency: stored response of %s: %v", method, err)
	}
	m := mt.New().Interface()
	if err := proto.Unmarshal(r.Body, m); err != nil {
		return nil, status.Errorf(codes.Internal, "idempotency: decode stored response of %s: %v", method, err)
	}
	return m, nil
}

func (s *Server) responseType(method string) (protoreflect.MessageType, error) {
	if t, ok := respTypes.Load(method); ok {
		return t.(protoreflect.MessageType), nil
	}
	svc, name, ok := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	if !ok {
		return nil, fmt.Errorf("method %q is not /pkg.Service/Method", method)
	}
	d, err := s.files.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return nil, fmt.Errorf("service %s not registered: %w", svc, err)
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a service", svc)
	}
	md := sd.Methods().ByName(protoreflect.Name(name))
	if md == nil {
		return nil, fmt.Errorf("service %s has no method %s", svc, name)
	}
	return s.types.FindMessageByName(md.Output().FullName())
}
