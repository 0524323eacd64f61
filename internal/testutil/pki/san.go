package pki

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// SAN is one subject alternative name that IssueSANs writes into a
// certificate byte for byte, including names crypto/x509 would refuse to
// write or to parse (a NUL, bytes outside ASCII, an upper-case scheme).
type SAN struct {
	tag   int // GeneralName context-specific tag
	value string
}

// URI is a uniformResourceIdentifier SAN.
func URI(s string) SAN { return SAN{tag: 6, value: s} }

// DNS is a dNSName SAN.
func DNS(s string) SAN { return SAN{tag: 2, value: s} }

// Email is an rfc822Name SAN.
func Email(s string) SAN { return SAN{tag: 1, value: s} }

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// IssueSANs signs a client and server leaf, valid from an hour ago for an
// hour, whose subject alternative name extension holds exactly sans as
// given. When crypto/x509 cannot parse the result, Leaf holds only the raw
// bytes and the validity period.
func (ca *CA) IssueSANs(t testing.TB, sans ...SAN) tls.Certificate {
	t.Helper()
	var names []byte
	for _, s := range sans {
		b, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: s.tag, Bytes: []byte(s.value)})
		if err != nil {
			t.Fatalf("pki: SAN %q: %v", s.value, err)
		}
		names = append(names, b...)
	}
	ext, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: names})
	if err != nil {
		t.Fatalf("pki: SAN extension: %v", err)
	}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		ExtraExtensions:       []pkix.Extension{{Id: oidSubjectAltName, Critical: true, Value: ext}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("pki: sign: %v", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		leaf = &x509.Certificate{Raw: der, NotBefore: tmpl.NotBefore, NotAfter: tmpl.NotAfter}
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// SourceSANs returns a Source that presents a leaf from IssueSANs and
// claims id as its own (what a server with that certificate would report),
// trusting ca and any extra bundles.
func (ca *CA) SourceSANs(t testing.TB, id string, sans []SAN, extra ...*x509bundle.Bundle) *Source {
	t.Helper()
	c := ca.IssueSANs(t, sans...)
	return &Source{
		SVID:    &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: []*x509.Certificate{c.Leaf}, PrivateKey: c.PrivateKey.(crypto.Signer)},
		Bundles: x509bundle.NewSet(append([]*x509bundle.Bundle{ca.Bundle()}, extra...)...),
	}
}

// PeerContext returns ctx carrying a gRPC peer shaped like the one grpc-go's
// TLS transport records after a TLS 1.3 handshake in which the client
// presented cert: what a server interceptor sees. It lets a test drive
// meshtls.Interceptors without a network; it is not a way to make
// security.PeerID report an ID, which only the interceptors record.
func PeerContext(ctx context.Context, cert tls.Certificate) context.Context {
	info := credentials.TLSInfo{
		State: tls.ConnectionState{
			Version:           tls.VersionTLS13,
			HandshakeComplete: true,
			PeerCertificates:  []*x509.Certificate{cert.Leaf},
		},
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}
	if len(cert.Leaf.URIs) == 1 {
		info.SPIFFEID = cert.Leaf.URIs[0]
	}
	return peer.NewContext(ctx, &peer.Peer{
		Addr:      &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000},
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8443},
		AuthInfo:  info,
	})
}
