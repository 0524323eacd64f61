// Package meshtls is the mesh's transport security and its server-side
// checks: the mTLS configurations and gRPC credentials of servers and
// clients, the peer verification both run on every handshake (SPIFFE
// bundles, strict SAN checks), connection lifetimes bound to certificate
// expiry, and the gRPC interceptors and HTTP handler that read the verified
// caller, record it for security.PeerID, and authorize every call before
// the handler runs. Only the mesh uses it: a service author configures it
// through mesh options and writes rules with package security. Everything
// here is safe for concurrent use.
package meshtls

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/gridmesh/gridmesh/security"
)

// ServerTLSConfig returns a TLS 1.3 server configuration that presents src's
// current SVID, requires a client certificate and accepts only an X.509-SVID
// that verifies against src's trust bundles and whose ID accept allows
// (spiffeid.MatchAny() to leave the decision to per-call authorization).
//
// Verification runs in VerifyConnection, which Go calls on every handshake
// including resumed sessions, so a resumed session is checked against the
// current bundle and clock like a full handshake.
func ServerTLSConfig(src security.Source, accept spiffeid.Matcher) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return certificate(src)
		},
		VerifyConnection: VerifyPeer(src, accept),
	}
}

// ClientTLSConfig returns a TLS 1.3 client configuration that presents src's
// current SVID and accepts only a server X.509-SVID that verifies against
// src's trust bundles and whose ID expect allows. Host names are not checked:
// the SPIFFE ID is the server's identity.
func ClientTLSConfig(src security.Source, expect spiffeid.Matcher) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Verification is done by VerifyConnection against SPIFFE bundles,
		// not by the Web PKI host name rules.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return certificate(src)
		},
		VerifyConnection: VerifyPeer(src, expect),
	}
}

// VerifyPeer returns a tls.Config.VerifyConnection function that verifies
// the peer's X.509-SVID chain against bundles at the current time, refuses
// a leaf whose subject alternative names could be read as another name
// (NUL bytes, control characters, bytes outside ASCII or percent-encoding
// in any URI, DNS or email SAN, or other than exactly one URI SAN), and
// checks its ID with match. Both sides use it, so a bad certificate fails
// the handshake before any request is read. Safe for concurrent use.
func VerifyPeer(bundles x509bundle.Source, match spiffeid.Matcher) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("meshtls: peer presented no certificate; an X.509-SVID is required")
		}
		raw, err := idFromCert(cs.PeerCertificates[0])
		if err != nil {
			return fmt.Errorf("meshtls: peer certificate refused: %w", err)
		}
		id, _, err := x509svid.Verify(cs.PeerCertificates, bundles)
		if err != nil {
			return fmt.Errorf("meshtls: peer certificate refused: %w", err)
		}
		if raw != id {
			return fmt.Errorf("meshtls: peer certificate refused: its URI SAN is %s as written but %s as parsed", raw, id)
		}
		if match != nil {
			if err := match(id); err != nil {
				return fmt.Errorf("meshtls: peer %s refused: %w", id, err)
			}
		}
		return nil
	}
}

func certificate(src x509svid.Source) (*tls.Certificate, error) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("meshtls: no SVID to present: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

// SVIDRemaining returns how long src's current SVID stays valid, which the
// mesh uses to bound connection age. It is not NotAfter minus NotBefore:
// issuers (SPIRE, the dev CA) backdate NotBefore for clock skew, which would
// overstate the usable life and let connections outlive their certificates.
func SVIDRemaining(src x509svid.Source) (time.Duration, error) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return 0, fmt.Errorf("meshtls: reading own SVID: %w", err)
	}
	return time.Until(svid.Certificates[0].NotAfter), nil
}
