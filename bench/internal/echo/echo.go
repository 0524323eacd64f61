// Package echo is the benchmark service: grpc-go's interop TestService whose
// UnaryCall returns a payload of the requested size.
package echo

import (
	"context"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// Method is the full gRPC method every benchmark call uses.
const Method = "/grpc.testing.TestService/UnaryCall"

// Service answers UnaryCall with a payload of ResponseSize bytes (the
// request's payload is echoed when ResponseSize is zero). Safe for
// concurrent use.
type Service struct {
	testgrpc.UnimplementedTestServiceServer
}

// UnaryCall echoes the request payload, or returns ResponseSize zero bytes.
func (Service) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if n := req.GetResponseSize(); n > 0 {
		return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: make([]byte, n)}}, nil
	}
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

// Request returns a request carrying size bytes that asks for size bytes
// back, so both directions carry the payload.
func Request(size int) *testpb.SimpleRequest {
	return &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, size)}}
}
