package security

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServerTLSConfig returns a TLS 1.3 server configuration that presents src's
// current SVID, requires a client certificate and accepts only an X.509-SVID
// that verifies against src's trust bundles and whose ID accept allows
// (spiffeid.MatchAny() to leave the decision to per-call authorization).
//
// Verification runs in VerifyConnection, which Go calls on every handshake
// including resumed sessions, so a resumed session is checked against the
// current bundle and clock like a full handshake.
func ServerTLSConfig(src Source, accept spiffeid.Matcher) *tls.Config {
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
func ClientTLSConfig(src Source, expect spiffeid.Matcher) *tls.Config {
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
func VerifyPeer(bundles Source, match spiffeid.Matcher) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("security: peer presented no certificate; an X.509-SVID is required")
		}
		raw, err := idFromCert(cs.PeerCertificates[0])
		if err != nil {
			return fmt.Errorf("security: peer certificate refused: %w", err)
		}
		id, _, err := x509svid.Verify(cs.PeerCertificates, bundles)
		if err != nil {
			return fmt.Errorf("security: peer certificate refused: %w", err)
		}
		if raw != id {
			return fmt.Errorf("security: peer certificate refused: its URI SAN is %s as written but %s as parsed", raw, id)
		}
		if match != nil {
			if err := match(id); err != nil {
				return fmt.Errorf("security: peer %s refused: %w", id, err)
			}
		}
		return nil
	}
}

func certificate(src Source) (*tls.Certificate, error) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("security: no SVID to present: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}
