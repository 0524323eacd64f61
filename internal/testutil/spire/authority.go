package spire

import "testing"

// X509Authority is one X.509 CA of the server's local authority, as
// `spire-server localauthority x509 show` reports it. ID is the hex subject
// key ID of the CA certificate, so it names the bundle certificate too.
type X509Authority struct {
	ID        string `json:"authority_id"`
	ExpiresAt string `json:"expires_at"`
}

// X509Authorities are the server's active, prepared and old X.509 CAs; a
// missing one has an empty ID.
type X509Authorities struct {
	Active   X509Authority
	Prepared X509Authority
	Old      X509Authority
}

// X509Authorities returns the server's X.509 authorities.
func (d *Deployment) X509Authorities(t testing.TB) X509Authorities {
	t.Helper()
	out := d.serverCLI(t, []string{"localauthority", "x509", "show"}, "-output", "json")
	var resp struct {
		Active   *X509Authority `json:"active"`
		Prepared *X509Authority `json:"prepared"`
		Old      *X509Authority `json:"old"`
	}
	if err := decodeOne(out, &resp); err != nil {
		t.Fatalf("spire: unexpected localauthority x509 show output (%v): %s", err, out)
	}
	var a X509Authorities
	r := resp
	if r.Active != nil {
		a.Active = *r.Active
	}
	if r.Prepared != nil {
		a.Prepared = *r.Prepared
	}
	if r.Old != nil {
		a.Old = *r.Old
	}
	return a
}

// PrepareX509Authority makes the server prepare a new X.509 CA and returns
// its authority ID. The new CA certificate joins the trust bundle right away;
// agents hand it to workloads at their next sync. It signs nothing until
// [Deployment.ActivateX509Authority].
func (d *Deployment) PrepareX509Authority(t testing.TB) string {
	t.Helper()
	return d.authorityCommand(t, "prepare", "", "prepared_authority")
}

// ActivateX509Authority makes a prepared CA the one that signs new SVIDs; the
// previously active CA becomes the old one and stays in the bundle.
func (d *Deployment) ActivateX509Authority(t testing.TB, authorityID string) {
	t.Helper()
	d.authorityCommand(t, "activate", authorityID, "activated_authority")
}

// TaintX509Authority taints the old CA: agents rotate every SVID it signed
// right away instead of at half-life.
func (d *Deployment) TaintX509Authority(t testing.TB, authorityID string) {
	t.Helper()
	d.authorityCommand(t, "taint", authorityID, "tainted_authority")
}

// RevokeX509Authority removes a tainted CA from the trust bundle: SVIDs it
// signed stop being trusted.
func (d *Deployment) RevokeX509Authority(t testing.TB, authorityID string) {
	t.Helper()
	d.authorityCommand(t, "revoke", authorityID, "revoked_authority")
}

func (d *Deployment) authorityCommand(t testing.TB, verb, authorityID, field string) string {
	t.Helper()
	flags := []string{"-output", "json"}
	if authorityID != "" {
		flags = append(flags, "-authorityID", authorityID)
	}
	out := d.serverCLI(t, []string{"localauthority", "x509", verb}, flags...)
	var resp map[string]*X509Authority
	if err := decodeOne(out, &resp); err != nil || resp[field] == nil || resp[field].ID == "" {
		t.Fatalf("spire: unexpected localauthority x509 %s output (%v): %s", verb, err, out)
	}
	return resp[field].ID
}
