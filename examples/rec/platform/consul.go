package platform

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/gridmesh/gridmesh/examples/rec/policy"
)

// consulAgent is the platform's Consul agent: its address, management
// token and each workload's token.
type consulAgent struct {
	addr   string
	mgmt   string
	tokens map[string]string // workload -> ACL token secret
}

// api returns the client configuration workload uses (the management
// token for "").
func (c *consulAgent) api(workload string) *api.Config {
	tok := c.mgmt
	if workload != "" {
		tok = c.tokens[workload]
	}
	return &api.Config{Address: c.addr, Token: tok}
}

// startConsul starts `consul agent -dev` on free loopback ports with ACLs on
// (default deny, so Consul's default intention is deny, as the matrix
// wants), gives every workload a token of its own, and writes the
// services' protocols and the intentions generated from the matrix.
func (p *Platform) startConsul(ctx context.Context) error {
	var ports [4]string
	for i := range ports {
		a, err := freePort()
		if err != nil {
			return err
		}
		_, ports[i], _ = net.SplitHostPort(a)
	}
	c := &consulAgent{addr: "127.0.0.1:" + ports[0], mgmt: newUUID(), tokens: map[string]string{}}
	args := []string{p.cfg.ConsulBin, "agent", "-dev",
		"-client", "127.0.0.1", "-bind", "127.0.0.1",
		"-http-port", ports[0], "-server-port", ports[1], "-serf-lan-port", ports[2], "-serf-wan-port", ports[3],
		"-grpc-port", "-1", "-grpc-tls-port", "-1", "-dns-port", "-1",
		"-data-dir", filepath.Join(p.cfg.Dir, "consul"), "-node", "rec",
		"-hcl", fmt.Sprintf(`acl { enabled = true
  default_policy = "deny"
  enable_token_persistence = false
  tokens { initial_management = %q
    agent = %q } }`, c.mgmt, c.mgmt),
	}
	client, err := api.NewClient(c.api(""))
	if err != nil {
		return err
	}
	var lastErr error
	ready := func() bool {
		lastErr = consulReady(ctx, client)
		return lastErr == nil
	}
	if err := p.start(ctx, &Proc{Name: "consul", Addr: c.addr, args: args, stop: syscall.SIGINT}, ready); err != nil {
		return fmt.Errorf("%w (last check: %v)", err, lastErr)
	}
	w := (&api.WriteOptions{}).WithContext(ctx)
	for _, wl := range policy.Workloads {
		// Its own leaf certificate and registration, and reading the
		// catalog and its own intentions.
		rules := fmt.Sprintf("service %q { policy = \"write\" }\nservice_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }\n", wl)
		pol, _, err := client.ACL().PolicyCreate(&api.ACLPolicy{Name: "rec-" + wl, Rules: rules}, w)
		if err != nil {
			return fmt.Errorf("platform: consul policy for %s: %w", wl, err)
		}
		tok, _, err := client.ACL().TokenCreate(&api.ACLToken{Description: "REC workload " + wl, Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, w)
		if err != nil {
			return fmt.Errorf("platform: consul token for %s: %w", wl, err)
		}
		c.tokens[wl] = tok.SecretID
	}
	for _, e := range ConsulConfigEntries() {
		if ok, _, err := client.ConfigEntries().Set(e, w); err != nil || !ok {
			return fmt.Errorf("platform: consul config entry %s %s: ok=%v %v", e.GetKind(), e.GetName(), ok, err)
		}
	}
	p.consul = c
	return nil
}

// consulReady says why the agent cannot serve the platform yet: no
// leader, no Connect CA root, or ACLs not bootstrapped.
func consulReady(ctx context.Context, c *api.Client) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	roots, _, err := c.Connect().CARoots(q)
	if err != nil {
		return err
	}
	if roots.ActiveRootID == "" {
		return errors.New("no active Connect CA root yet")
	}
	if _, _, err := c.ACL().TokenReadSelf(q); err != nil {
		return err
	}
	return nil
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// ConsulConfigEntries returns the Consul config entries that put the
// authorization matrix in Consul: each service's protocol
// (service-defaults: grpc, or http for the gateway) and its
// service-intentions, one source per workload the matrix lets call it,
// with an L7 permission per method (a gRPC method is an HTTP/2 POST to
// "/pkg.Service/Method") or per gateway route. Workloads with no
// permission get no intention, so Consul's default (deny, with ACLs in
// default-deny) refuses them, as the matrix's default deny does.
func ConsulConfigEntries() []api.ConfigEntry {
	var out []api.ConfigEntry
	for _, svc := range []string{policy.Registry, policy.Accounts, policy.Trading, policy.Settlement} {
		out = append(out, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: svc, Protocol: "grpc"})
		entry := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: svc}
		for _, caller := range policy.Workloads {
			var perms []*api.IntentionPermission
			for _, m := range policy.Methods(policy.Services[svc]) {
				if policy.Allowed(caller, m) {
					perms = append(perms, &api.IntentionPermission{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathExact: m}})
				}
			}
			if len(perms) > 0 {
				entry.Sources = append(entry.Sources, &api.SourceIntention{Name: caller, Permissions: perms, Description: "generated from policy.Matrix"})
			}
		}
		out = append(out, entry)
	}
	out = append(out, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: policy.Gateway, Protocol: "http"})
	gw := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: policy.Gateway}
	for _, caller := range policy.Workloads {
		var perms []*api.IntentionPermission
		for _, r := range policy.GatewayRoutes {
			if r.HTTPAllowed(caller) {
				perms = append(perms, &api.IntentionPermission{Action: api.IntentionActionAllow, HTTP: routePermission(r.Pattern)})
			}
		}
		if len(perms) > 0 {
			gw.Sources = append(gw.Sources, &api.SourceIntention{Name: caller, Permissions: perms, Description: "generated from policy.GatewayRoutes"})
		}
	}
	return append(out, gw)
}

// routePermission turns a gateway route pattern ("GET /v1/orders/*") into
// an HTTP permission: the method (GET also allowing HEAD, as
// security.HTTPRules does), and the path exact, or as a regular expression
// where a "*" stands for one segment.
func routePermission(pattern string) *api.IntentionHTTPPermission {
	verb, path, _ := strings.Cut(pattern, " ")
	methods := []string{verb}
	if verb == "GET" {
		methods = append(methods, "HEAD")
	}
	if !strings.Contains(path, "*") {
		return &api.IntentionHTTPPermission{PathExact: path, Methods: methods}
	}
	segs := strings.Split(path, "/")
	for i, s := range segs {
		if s == "*" {
			segs[i] = "[^/]+"
		} else {
			segs[i] = regexp.QuoteMeta(s)
		}
	}
	return &api.IntentionHTTPPermission{PathRegex: strings.Join(segs, "/"), Methods: methods}
}

// consulTargets are the gRPC targets of the platform's services on Consul.
func consulTargets() map[string]string {
	t := map[string]string{}
	for _, w := range []string{policy.Registry, policy.Accounts, policy.Trading, policy.Settlement} {
		t[w] = "consul:///" + w
	}
	return t
}

// ConsulAddr is the Consul agent's HTTP address on Consul (Config.ConsulBin),
// else "".
func (p *Platform) ConsulAddr() string {
	if p.consul == nil {
		return ""
	}
	return p.consul.addr
}

// ConsulEnv is the environment that makes a REC binary join the platform
// as workload on Consul (CONSUL_HTTP_ADDR and the workload's token), for
// running one by hand, e.g. recload.
func (p *Platform) ConsulEnv(workload string) []string {
	if p.consul == nil {
		return nil
	}
	return []string{"CONSUL_HTTP_ADDR=" + p.consul.addr, "CONSUL_HTTP_TOKEN=" + p.consul.tokens[workload]}
}

// ConsulInstances returns the passing instances of service in Consul's
// catalog, as "id@address:port", sorted.
func (p *Platform) ConsulInstances(ctx context.Context, service string) ([]string, error) {
	if p.consul == nil {
		return nil, errors.New("platform: not on Consul")
	}
	c, err := api.NewClient(p.consul.api(""))
	if err != nil {
		return nil, err
	}
	entries, _, err := c.Health().Service(service, "", true, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Service.ID+"@"+net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port)))
	}
	slices.Sort(out)
	return out, nil
}

// waitConsulInstances waits until service has n passing instances.
func (p *Platform) waitConsulInstances(ctx context.Context, service string, n int) error {
	deadline := time.Now().Add(p.cfg.StartTimeout)
	for {
		got, err := p.ConsulInstances(ctx, service)
		if err == nil && len(got) >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("platform: %d passing %s instances in Consul after %v, want %d (%v)", len(got), service, p.cfg.StartTimeout, n, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ConsulManagementToken is the agent's management token on Consul, for
// looking around with curl or the consul CLI; else "".
func (p *Platform) ConsulManagementToken() string {
	if p.consul == nil {
		return ""
	}
	return p.consul.mgmt
}

// RotateConsulCA forces a Connect CA rotation: it gives the built-in CA a
// new private key (PUT /v1/connect/ca/configuration), so Consul makes a
// new root, cross-signs it with the old one and keeps both trusted while
// leaves signed by the old one live. It returns the new root's ID once it
// is active.
func (p *Platform) RotateConsulCA(ctx context.Context) (string, error) {
	if p.consul == nil {
		return "", errors.New("platform: not on Consul")
	}
	c, err := api.NewClient(p.consul.api(""))
	if err != nil {
		return "", err
	}
	connect := c.Connect()
	q := (&api.QueryOptions{}).WithContext(ctx)
	before, _, err := connect.CARoots(q)
	if err != nil {
		return "", fmt.Errorf("platform: CA roots: %w", err)
	}
	conf, _, err := connect.CAGetConfig(q)
	if err != nil {
		return "", fmt.Errorf("platform: CA configuration: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", err
	}
	if conf.Config == nil {
		conf.Config = map[string]any{}
	}
	conf.Config["PrivateKey"] = string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	conf.Config["PrivateKeyType"] = "ec"
	conf.Config["PrivateKeyBits"] = 256
	delete(conf.Config, "RootCert")
	if _, err := connect.CASetConfig(conf, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return "", fmt.Errorf("platform: set CA configuration: %w", err)
	}
	for {
		roots, _, err := connect.CARoots(q)
		if err == nil && roots.ActiveRootID != before.ActiveRootID {
			return roots.ActiveRootID, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("platform: CA rotation: active root still %s: %w", before.ActiveRootID, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// SignedByActiveConsulRoot reports whether cert was issued by the Connect
// CA's active root.
func (p *Platform) SignedByActiveConsulRoot(ctx context.Context, cert *x509.Certificate) (bool, error) {
	if p.consul == nil {
		return false, errors.New("platform: not on Consul")
	}
	c, err := api.NewClient(p.consul.api(""))
	if err != nil {
		return false, err
	}
	roots, _, err := c.Connect().CARoots((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, err
	}
	for _, r := range roots.Roots {
		if !r.Active {
			continue
		}
		block, _ := pem.Decode([]byte(r.RootCertPEM))
		if block == nil {
			return false, fmt.Errorf("platform: active root %s: no PEM", r.ID)
		}
		root, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return false, err
		}
		return bytes.Equal(cert.AuthorityKeyId, root.SubjectKeyId), nil
	}
	return false, errors.New("platform: no active Connect CA root")
}
