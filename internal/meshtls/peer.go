package meshtls

import (
	"context"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"net/http"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/gridmesh/gridmesh/internal/peerctx"
)

// transportPeerID reads the caller's SPIFFE ID from the TLS state gRPC's
// transport put in ctx at the handshake, with the same SAN checks as
// VerifyPeer (so a connection verified by other credentials, such as
// grpc-go's xDS credentials, is held to them too).
func transportPeerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, errors.New("no gRPC peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("no client certificate")
	}
	return idFromCert(info.State.PeerCertificates[0])
}

// identityHeaders are the request headers in which a proxy tells a backend
// who the verified caller is: Envoy's and Istio's X-Forwarded-Client-Cert,
// and X-SPIFFE-ID. No proxy stands in front of a mesh server, so such a
// header can only have been written by the caller itself: the mesh's
// server checks delete them (HTTP headers and gRPC metadata alike) before
// authorization and the handler, so code written for a sidecar mesh that
// trusts them cannot be fooled. Handlers read the caller with security.PeerID.
var identityHeaders = []string{"X-Forwarded-Client-Cert", "X-Spiffe-Id"}

// identityMetadata are identityHeaders as gRPC metadata keys.
var identityMetadata = []string{"x-forwarded-client-cert", "x-spiffe-id"}

// stripIdentityMetadata returns ctx without the incoming identity metadata
// a caller could forge; ctx itself when there is none (the common case,
// which costs no allocation).
func stripIdentityMetadata(ctx context.Context) context.Context {
	found := false
	for _, k := range identityMetadata {
		if len(metadata.ValueFromIncomingContext(ctx, k)) > 0 {
			found = true
			break
		}
	}
	if !found {
		return ctx
	}
	md, _ := metadata.FromIncomingContext(ctx) // a copy
	for _, k := range identityMetadata {
		delete(md, k)
	}
	return metadata.NewIncomingContext(ctx, md)
}

// stripIdentityHeaders deletes identityHeaders from h.
func stripIdentityHeaders(h http.Header) {
	for _, k := range identityHeaders {
		delete(h, k)
	}
}

// acceptHTTPPeer returns r's context carrying caller, read by HTTPHandler
// from r's verified client certificate, as the verified peer, and deletes
// the identity headers a caller could forge from r.Header.
func acceptHTTPPeer(r *http.Request, caller spiffeid.ID) context.Context {
	stripIdentityHeaders(r.Header)
	return peerctx.WithVerified(r.Context(), caller)
}

// maxURISAN is the longest URI SAN accepted, as the X.509-SVID
// specification limits SPIFFE IDs to 2048 bytes.
const maxURISAN = 2048

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// idFromCert returns the SPIFFE ID of an X.509-SVID leaf, read from the
// certificate's DER bytes rather than from crypto/x509's parsed URL (which
// lower-cases the scheme and decodes escapes), after checkSANs.
func idFromCert(cert *x509.Certificate) (spiffeid.ID, error) {
	raw, err := checkSANs(cert)
	if err != nil {
		return spiffeid.ID{}, err
	}
	id, err := spiffeid.FromString(raw)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("URI SAN %s is not a SPIFFE ID: %w", quoteSAN([]byte(raw)), err)
	}
	return id, nil
}

// checkSANs refuses a certificate whose subject alternative names another
// reader could take for a different name than the mesh does, and returns
// its one URI SAN as written. Every URI, DNS and email SAN must be
// printable ASCII without spaces: a NUL (which C string handling truncates,
// so "victim\x00evil" once matched a rule for "victim" in Envoy), control
// characters and bytes outside ASCII (invalid UTF-8, overlong encodings,
// Unicode look-alikes) are refused. The certificate must have exactly one
// URI SAN, of at most 2048 bytes, without percent-encoding (SPIFFE IDs have
// none, and "%00", "%2F" or "%2E" decode to a different name).
func checkSANs(cert *x509.Certificate) (string, error) {
	var uri []byte
	uris := 0
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		tag, names, rest, ok := derNext(ext.Value)
		if !ok || tag != 0x30 || len(rest) > 0 {
			return "", errors.New("malformed subject alternative name extension")
		}
		for len(names) > 0 {
			var name []byte
			if tag, name, names, ok = derNext(names); !ok {
				return "", errors.New("malformed subject alternative name extension")
			}
			var kind string
			switch tag { // context-specific, primitive GeneralName forms
			case 0x81:
				kind = "email"
			case 0x82:
				kind = "DNS"
			case 0x86:
				kind = "URI"
				uris++
				uri = name
			default: // IP addresses are bytes; other forms are not read
				continue
			}
			if err := checkSANBytes(name); err != nil {
				return "", fmt.Errorf("%s SAN %s refused: %w", kind, quoteSAN(name), err)
			}
		}
	}
	switch {
	case uris == 0:
		return "", errors.New("certificate has no URI SAN; an X.509-SVID has exactly one, its SPIFFE ID")
	case uris > 1:
		return "", fmt.Errorf("certificate has %d URI SANs; an X.509-SVID has exactly one, its SPIFFE ID", uris)
	case len(uri) > maxURISAN:
		return "", fmt.Errorf("URI SAN is %d bytes; a SPIFFE ID has at most %d", len(uri), maxURISAN)
	}
	for _, c := range uri {
		if c == '%' {
			return "", fmt.Errorf("URI SAN %s refused: it is percent-encoded; a SPIFFE ID has no escapes", quoteSAN(uri))
		}
	}
	return string(uri), nil
}

// checkSANBytes accepts printable ASCII without spaces (0x21 to 0x7E).
func checkSANBytes(b []byte) error {
	for _, c := range b {
		switch {
		case c == 0:
			return errors.New("it contains a NUL byte")
		case c < 0x20 || c == 0x7f:
			return fmt.Errorf("it contains control character 0x%02x", c)
		case c == ' ':
			return errors.New("it contains a space")
		case c >= 0x80:
			return fmt.Errorf("it contains byte 0x%02x, which is not ASCII (a SAN is an IA5 string)", c)
		}
	}
	return nil
}

// quoteSAN quotes a SAN for an error message, cut to 100 bytes.
func quoteSAN(b []byte) string {
	if len(b) > 100 {
		return fmt.Sprintf("%q (%d bytes)", b[:100], len(b))
	}
	return fmt.Sprintf("%q", b)
}

// derNext splits the first DER element off b: its tag byte, contents and
// what follows. crypto/x509 has already parsed the extension strictly, so
// this only walks it.
func derNext(b []byte) (tag byte, body, rest []byte, ok bool) {
	if len(b) < 2 || b[0]&0x1f == 0x1f { // high tag numbers appear in no SAN
		return 0, nil, nil, false
	}
	tag, n, b := b[0], int(b[1]), b[2:]
	if n&0x80 != 0 {
		k := n & 0x7f
		if k == 0 || k > 3 || len(b) < k {
			return 0, nil, nil, false
		}
		n = 0
		for _, c := range b[:k] {
			n = n<<8 | int(c)
		}
		b = b[k:]
	}
	if n > len(b) {
		return 0, nil, nil, false
	}
	return tag, b[:n], b[n:], true
}
