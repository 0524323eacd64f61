package discovery

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Target is a parsed discovery target.
type Target struct {
	// Scheme is "consul" or "static".
	Scheme string
	// Service is the Consul service name (consul).
	Service string
	// Tags filter Consul instances: an instance must carry all of them
	// (consul, ?tag=, repeatable).
	Tags []string
	// Datacenter is the Consul datacenter to query; empty is the agent's
	// own (consul, ?dc=).
	Datacenter string
	// Addrs are the fixed host:port endpoints (static).
	Addrs []string
	// ID is the SPIFFE ID every static endpoint must present (static,
	// ?spiffe_id=); zero leaves the check to the mesh's default.
	ID spiffeid.ID
}

// ParseTarget parses a discovery target:
//
//	consul:///<service>[?tag=<tag>][&tag=<tag>...][&dc=<datacenter>]
//	static:///<host:port>[,<host:port>...][?spiffe_id=<SPIFFE ID>]
//
// The authority must be empty. dns:/// and xds:/// targets are grpc-go's and
// are not parsed here.
func ParseTarget(target string) (Target, error) {
	u, err := url.Parse(target)
	if err != nil {
		return Target{}, fmt.Errorf("discovery: target %q: %w", target, err)
	}
	return parseURL(target, u)
}

func parseURL(raw string, u *url.URL) (Target, error) {
	bad := func(format string, args ...any) (Target, error) {
		return Target{}, fmt.Errorf("discovery: target %q: %s", raw, fmt.Sprintf(format, args...))
	}
	if u.Host != "" {
		return bad("authority %q is not supported; write %s:///... with three slashes", u.Host, u.Scheme)
	}
	q := u.Query()
	path := strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "consul":
		for k := range q {
			if k != "tag" && k != "dc" {
				return bad("unknown parameter %q; want tag or dc", k)
			}
		}
		if path == "" || strings.Contains(path, "/") {
			return bad("want consul:///<service name>[?tag=...&dc=...]")
		}
		t := Target{Scheme: "consul", Service: path, Datacenter: q.Get("dc")}
		for _, tag := range q["tag"] {
			if tag == "" {
				return bad("empty tag")
			}
			if !slices.Contains(t.Tags, tag) {
				t.Tags = append(t.Tags, tag)
			}
		}
		return t, nil
	case "static":
		for k := range q {
			if k != "spiffe_id" {
				return bad("unknown parameter %q; want spiffe_id", k)
			}
		}
		t := Target{Scheme: "static"}
		if s := q.Get("spiffe_id"); s != "" {
			id, err := spiffeid.FromString(s)
			if err != nil {
				return bad("spiffe_id: %v", err)
			}
			t.ID = id
		}
		if path == "" {
			return bad("want static:///<host:port>[,<host:port>...]")
		}
		for _, a := range strings.Split(path, ",") {
			host, port, err := net.SplitHostPort(a)
			if err != nil {
				return bad("endpoint %q: want host:port", a)
			}
			if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 || host == "" {
				return bad("endpoint %q: want host:port with a port in 1-65535", a)
			}
			a = net.JoinHostPort(host, port)
			if !slices.Contains(t.Addrs, a) {
				t.Addrs = append(t.Addrs, a)
			}
		}
		return t, nil
	default:
		return bad("scheme %q is not discovery's; want consul or static", u.Scheme)
	}
}

// String formats t back into target form.
func (t Target) String() string {
	q := url.Values{}
	switch t.Scheme {
	case "consul":
		for _, tag := range t.Tags {
			q.Add("tag", tag)
		}
		if t.Datacenter != "" {
			q.Set("dc", t.Datacenter)
		}
		s := "consul:///" + t.Service
		if len(q) > 0 {
			s += "?" + q.Encode()
		}
		return s
	case "static":
		if !t.ID.IsZero() {
			q.Set("spiffe_id", t.ID.String())
		}
		s := "static:///" + strings.Join(t.Addrs, ",")
		if len(q) > 0 {
			s += "?" + q.Encode()
		}
		return s
	}
	return ""
}
