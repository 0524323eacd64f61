// Package echo is the benchmark service: grpc-go's interop TestService whose
// UnaryCall returns a payload of the requested size, and its HTTP
// counterpart, a POST that answers with as many bytes as it was sent.
package echo

import (
	"context"
	"io"
	"net/http"
	"strconv"

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

// HTTPPath is the path every HTTP benchmark call posts to.
const HTTPPath = "/echo"

// HTTPHandler is the HTTP side's UnaryCall: it reads the request body and
// answers 200 with as many zero bytes, so both directions carry the
// payload as they do over gRPC. Bodies over 1 MiB are refused (413).
// Safe for concurrent use.
func HTTPHandler() http.Handler {
	zeros := make([]byte, 64<<10)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != HTTPPath {
			http.Error(w, "echo: POST "+HTTPPath+" only", http.StatusNotFound)
			return
		}
		n, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, "echo: "+err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k := min(n, int64(len(zeros)))
			if _, err := w.Write(zeros[:k]); err != nil {
				return
			}
			n -= k
		}
	})
}
