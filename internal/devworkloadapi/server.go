// Package devworkloadapi serves the SPIFFE Workload API from a development
// CA, so local runs and the demo get their identities the way production
// workloads get them from a SPIRE agent.
//
// One unix socket serves one SPIFFE ID: a workload is told its identity by
// the socket it is given in SPIFFE_ENDPOINT_SOCKET. There is no workload
// attestation; anyone who can open a socket gets its identity, which is why
// this is for development only.
package devworkloadapi

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/security"
)

// Server serves the Workload API for several identities, one socket each.
// Safe for concurrent use; Close stops everything it started.
type Server struct {
	ca *security.DevCA

	mu      sync.Mutex
	sockets []*socket
	closed  bool
}

type socket struct {
	path string
	id   spiffeid.ID
	src  *security.DevSource
	grpc *grpc.Server
	done chan struct{}
}

// New returns a server issuing from ca.
func New(ca *security.DevCA) *Server { return &Server{ca: ca} }

// Add starts serving id on a unix socket at path (replacing a stale socket
// file) and returns the SPIFFE_ENDPOINT_SOCKET value for it.
func (s *Server) Add(path string, id spiffeid.ID) (string, error) {
	src, err := s.ca.Source(id)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		src.Close()
		return "", fmt.Errorf("devworkloadapi: socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		src.Close()
		return "", fmt.Errorf("devworkloadapi: removing stale socket: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		src.Close()
		return "", fmt.Errorf("devworkloadapi: listening on %s: %w", path, err)
	}
	sock := &socket{path: path, id: id, src: src, grpc: grpc.NewServer(), done: make(chan struct{})}
	workload.RegisterSpiffeWorkloadAPIServer(sock.grpc, &handler{src: src})
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		lis.Close()
		src.Close()
		return "", fmt.Errorf("devworkloadapi: %w", net.ErrClosed)
	}
	s.sockets = append(s.sockets, sock)
	s.mu.Unlock()
	go func() {
		defer close(sock.done)
		sock.grpc.Serve(lis)
	}()
	return "unix://" + path, nil
}

// Source returns the rotating identity source behind the socket for id, for
// callers in the same process.
func (s *Server) Source(id spiffeid.ID) (*security.DevSource, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sock := range s.sockets {
		if sock.id == id {
			return sock.src, true
		}
	}
	return nil, false
}

// Close stops every socket and removes the socket files. Safe to call twice.
func (s *Server) Close() error {
	s.mu.Lock()
	socks := s.sockets
	s.sockets, s.closed = nil, true
	s.mu.Unlock()
	for _, sock := range socks {
		sock.grpc.Stop()
		<-sock.done
		sock.src.Close()
		os.Remove(sock.path)
	}
	return nil
}

type handler struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	src *security.DevSource
}

// checkHeader enforces the Workload API spec's security header, which keeps
// browsers and proxies from reaching the API by accident.
func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func (h *handler) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	if err := checkHeader(stream.Context()); err != nil {
		return err
	}
	for {
		changed := h.src.Changed()
		svid, err := h.src.GetX509SVID()
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		bundle, err := h.src.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		certs, key, err := svid.MarshalRaw()
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		resp := &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
			SpiffeId:    svid.ID.String(),
			X509Svid:    certs,
			X509SvidKey: key,
			Bundle:      concat(bundle.X509Authorities()),
		}}}
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

func (h *handler) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	if err := checkHeader(stream.Context()); err != nil {
		return err
	}
	for {
		changed := h.src.Changed()
		svid, err := h.src.GetX509SVID()
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		td := svid.ID.TrustDomain()
		bundle, err := h.src.GetX509BundleForTrustDomain(td)
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		resp := &workload.X509BundlesResponse{Bundles: map[string][]byte{td.IDString(): concat(bundle.X509Authorities())}}
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

// The JWT and WIT methods keep the embedded Unimplemented answers: the mesh
// uses X.509-SVIDs only, and a clear UNIMPLEMENTED is the honest reply.

func concat(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
