package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/gridmesh/gridmesh/bench/internal/echo"
	"github.com/gridmesh/gridmesh/bench/internal/loadgen"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// httpClient returns the client and URL for -proto http: h2c with prior
// knowledge (plain, the sidecar's client-side proxy), net/http with a
// static TLS 1.3 config and HTTP/2 (tls), or mesh.HTTPClient with the
// -telemetry and -resilience choices (mesh).
func httpClient(ctx context.Context, mode, target, caFile, serverName string, balance, res bool, tel string, sample float64) (*http.Client, string, func(), error) {
	nop := func() {}
	if balance {
		return nil, "", nop, errors.New("-balance is for -proto grpc only")
	}
	url := "http://" + target + echo.HTTPPath
	switch mode {
	case "plain":
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: &p}
		return &http.Client{Transport: tr}, url, tr.CloseIdleConnections, nil
	case "tls":
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, "", nop, fmt.Errorf("tls mode needs -ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, "", nop, fmt.Errorf("no certificate in %s", caFile)
		}
		tr := &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS13},
			ForceAttemptHTTP2: true,
		}
		return &http.Client{Transport: tr}, "https://" + target + echo.HTTPPath, tr.CloseIdleConnections, nil
	case "mesh":
		src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{})
		if err != nil {
			return nil, "", nop, err
		}
		mopts, shutdown, err := telemetryMode(ctx, tel, "bench-load", sample)
		if err != nil {
			src.Close()
			return nil, "", nop, err
		}
		if !res {
			mopts = append(mopts, mesh.WithoutResilience())
		}
		hc, err := mesh.HTTPClient(append(mopts, mesh.WithIdentity(src))...)
		if err != nil {
			shutdown()
			src.Close()
			return nil, "", nop, err
		}
		return hc, url, func() {
			_ = hc.Transport.(*mesh.HTTPTransport).Close()
			shutdown()
			src.Close()
		}, nil
	default:
		return nil, "", nop, errors.New("-mode must be plain, tls or mesh, not " + mode)
	}
}

// httpCall posts payload bytes to url and reads the answer to the end; a
// status other than 200 or a short answer is an error.
func httpCall(hc *http.Client, url string, payload int) loadgen.Call {
	body := make([]byte, payload)
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		switch {
		case err != nil:
			return err
		case resp.StatusCode != http.StatusOK:
			return fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
		case n != int64(payload):
			return fmt.Errorf("%s: %d bytes back, want %d", url, n, payload)
		}
		return nil
	}
}

// firstHTTPCall checks the path, trying for up to 10s while the server's
// identity or listener comes up.
func firstHTTPCall(ctx context.Context, call loadgen.Call) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		err := call(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}
