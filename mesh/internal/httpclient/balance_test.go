package httpclient_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/gridmesh/gridmesh/mesh/internal/httpclient"
)

// TestNeverSentKnowsOnlyProofs: only errors that prove the server never
// saw the request are marked; a lost response, a reset and text a server
// chose are not.
func TestNeverSentKnowsOnlyProofs(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("mesh: trading.mesh endpoint 127.0.0.1:1: %w", err) }
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"graceful GOAWAY above the stream", wrap(errors.New("http2: Transport received Server's graceful shutdown GOAWAY")), true},
		{"GOAWAY, body not rewindable", wrap(errors.New("http2: Transport: cannot retry err [http2: Transport received Server's graceful shutdown GOAWAY] after Request.Body was written; define Request.GetBody to avoid this error")), true},
		{"REFUSED_STREAM", wrap(errors.New("stream error: stream ID 3; REFUSED_STREAM")), true},
		{"REFUSED_STREAM from peer", wrap(errors.New("stream error: stream ID 5; REFUSED_STREAM; received from peer")), true},
		{"no cached connection", wrap(errors.New("http2: no cached connection was available")), true},
		{"connection unusable", wrap(errors.New("http2: client conn not usable")), true},
		{"connection not established", wrap(errors.New("http2: client conn could not be established")), true},
		{"stream reset after sending", wrap(errors.New("stream error: stream ID 3; INTERNAL_ERROR; received from peer")), false},
		{"GOAWAY at or below the stream", wrap(errors.New(`http2: server sent GOAWAY and closed the connection; LastStreamID=3, ErrCode=NO_ERROR, debug="REFUSED_STREAM"`)), false},
		{"EOF reading the response", wrap(io.EOF), false},
		{"unexpected EOF", wrap(io.ErrUnexpectedEOF), false},
		{"connection reset", wrap(&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}), false},
		{"canceled", wrap(context.Canceled), false},
		{"server text naming GOAWAY", wrap(fmt.Errorf("read: %v", "http2: Transport received Server's graceful shutdown GOAWAY; then EOF")), false},
		{"nil", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := httpclient.NeverSent(tc.err); got != tc.want {
				t.Errorf("NeverSent(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
