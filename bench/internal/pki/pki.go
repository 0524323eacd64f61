// Package pki issues the static TLS material of the benchmark's baselines:
// a CA and P-256 ECDSA leaves, the key type security.DevCA issues to the
// mesh, so the TLS handshake and record costs compare like for like.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files names the PEM files Write creates.
type Files struct {
	CA string // CA certificate
	// ServerCert/ServerKey are for "localhost" and 127.0.0.1;
	// ServerPEM is both in one file, as haproxy wants them.
	ServerCert, ServerKey, ServerPEM string
	// ClientPEM is the client-side proxy's certificate and key, for mTLS
	// between the two sidecars.
	ClientPEM string
}

// Write creates a fresh CA, a server certificate for "localhost" and
// 127.0.0.1 and a client certificate, and writes them as PEM files in dir.
func Write(dir string) (*Files, error) {
	m, err := New()
	if err != nil {
		return nil, err
	}
	p := &Files{
		CA:         filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.crt"),
		ServerKey:  filepath.Join(dir, "server.key"),
		ServerPEM:  filepath.Join(dir, "server.pem"),
		ClientPEM:  filepath.Join(dir, "client.pem"),
	}
	files := map[string][]byte{
		p.CA:         m.CA,
		p.ServerCert: m.ServerCert,
		p.ServerKey:  m.ServerKey,
		p.ServerPEM:  append(append([]byte{}, m.ServerCert...), m.ServerKey...),
		p.ClientPEM:  append(append([]byte{}, m.ClientCert...), m.ClientKey...),
	}
	for name, b := range files {
		if err := os.WriteFile(name, b, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Material is PEM-encoded TLS material.
type Material struct {
	CA                    []byte
	ServerCert, ServerKey []byte
	ClientCert, ClientKey []byte
}

// ServerConfig returns a TLS 1.3 server config with the server certificate.
func (m *Material) ServerConfig() (*tls.Config, error) {
	cert, err := tls.X509KeyPair(m.ServerCert, m.ServerKey)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}, nil
}

// ClientConfig returns a TLS 1.3 client config that trusts the CA and
// verifies the name "localhost".
func (m *Material) ClientConfig() *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(m.CA)
	return &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13}
}

// New issues fresh material, valid for a day.
func New() (*Material, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gridmesh bench CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			DNSNames:     []string{"localhost"},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
	}
	sc, sk, err := leaf(2, "localhost", x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	cc, ck, err := leaf(3, "sidecar-client", x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	return &Material{
		CA:         pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		ServerCert: sc, ServerKey: sk,
		ClientCert: cc, ClientKey: ck,
	}, nil
}
