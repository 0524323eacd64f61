// Command meshctl inspects a meshed process through its admin endpoint
// (mesh.WithAdmin): identity, endpoints, config and why recent calls went
// the way they did.
//
//	meshctl [-admin 127.0.0.1:15000] [-o table|json] COMMAND [ARGS]
//
// Commands:
//
//	status            process, components, identities, targets, denials at a glance
//	identity          SVIDs with expiry, and the trust bundles
//	endpoints [TARGET] targets with balancer, breaker, endpoints and the endpoints calls reached
//	config            effective policies and their source, last config received, unsupported fields
//	explain TARGET    why recent calls to TARGET were routed, retried or denied; TARGET is a
//	                  dial target, a method or a caller SPIFFE ID
//
// The admin address comes from -admin, else MESHCTL_ADMIN, else
// 127.0.0.1:15000.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "meshctl:", err)
		stop()
		os.Exit(1)
	}
}

const usage = `usage: meshctl [-admin ADDR] [-o table|json] COMMAND [ARGS]

commands:
  status              process, components, identities, targets and denials at a glance
  identity            SVIDs with expiry, and the trust bundles
  endpoints [TARGET]  targets: balancer, breaker, endpoints, and the endpoints calls reached
  config              effective policies with their source, last config received, unsupported fields
  explain TARGET      why recent calls to TARGET (dial target, method or caller SPIFFE ID)
                      were routed, retried or denied

flags:
`

// errUsage is returned for bad command lines; its message is the detail.
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("meshctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	def := os.Getenv("MESHCTL_ADMIN")
	if def == "" {
		def = "127.0.0.1:15000"
	}
	addr := fs.String("admin", def, "admin endpoint of the process (`host:port`), as given to mesh.WithAdmin; env MESHCTL_ADMIN")
	output := fs.String("o", "table", "output `format`: table or json")
	limit := fs.Int("n", 20, "explain: how many recent events to show")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the admin endpoint")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("-o %q: want table or json", *output)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no command given")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	c := &client{base: "http://" + *addr, http: &http.Client{}}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	asJSON := *output == "json"
	switch cmd {
	case "status":
		return c.status(ctx, stdout, asJSON)
	case "identity":
		return c.identity(ctx, stdout, asJSON)
	case "endpoints":
		target := ""
		if len(rest) > 0 {
			target = rest[0]
		}
		return c.endpoints(ctx, stdout, target, asJSON)
	case "config":
		return c.config(ctx, stdout, asJSON)
	case "explain":
		if len(rest) != 1 {
			return errors.New("explain needs one TARGET: a dial target (as given to mesh.Dial), a full method (/pkg.Service/Method) or a caller SPIFFE ID")
		}
		return c.explain(ctx, stdout, rest[0], *limit, asJSON)
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}

type client struct {
	base string
	http *http.Client
}

// get decodes the JSON at path into v; raw, when non-nil, receives the body.
func (c *client) get(ctx context.Context, path string, query url.Values, v any) ([]byte, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin endpoint %s: %w (is the process running with mesh.WithAdmin? set -admin or MESHCTL_ADMIN)", c.base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("admin endpoint %s: %w", c.base, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin endpoint %s%s: %s: %s", c.base, path, resp.Status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return nil, fmt.Errorf("admin endpoint %s%s: %w", c.base, path, err)
	}
	return body, nil
}
