package platform

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/gridmesh/gridmesh/examples/rec/policy"
)

// Pair is one (caller, method) of the authorization matrix and what the
// running platform answered.
type Pair struct {
	Caller, Method string
	Allowed        bool // by policy.Matrix
	Code           codes.Code
	// HTTPStatus is the gateway's answer, for HTTP routes (Method is then
	// "VERB /path").
	HTTPStatus int
	Message    string
}

// Holds reports whether the platform answered as the matrix says: denied
// pairs get PERMISSION_DENIED (HTTP 403), allowed pairs anything else.
func (p Pair) Holds() bool {
	if p.HTTPStatus != 0 {
		return (p.HTTPStatus == http.StatusForbidden) != p.Allowed
	}
	return (p.Code == codes.PermissionDenied) != p.Allowed
}

// SweepAuthz calls every method of every service, and every route of the
// gateway, as every workload (on a SPIRE agent, Config.Socket: as the
// operator and the portal only), with an empty request (which every write
// refuses as INVALID_ARGUMENT / 400 before changing anything), and returns
// each pair's answer.
func (p *Platform) SweepAuthz(ctx context.Context) ([]Pair, error) {
	var pairs []Pair
	services := []string{policy.Registry, policy.Accounts, policy.Trading, policy.Settlement}
	for _, w := range policy.Workloads {
		if p.cfg.Socket != "" && w != policy.Operator && w != policy.Portal {
			// A SPIRE agent gives this process only the identities
			// registered for every process of the user (operator, portal);
			// the services' own IDs belong to their binaries.
			continue
		}
		c, err := p.Client(ctx, w, slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, fmt.Errorf("authz sweep as %s: %w", w, err)
		}
		for _, svc := range services {
			for _, m := range policy.Methods(policy.Services[svc]) {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := c.Conns[svc].Invoke(cctx, m, &emptypb.Empty{}, &emptypb.Empty{})
				cancel()
				st := status.Convert(err)
				pairs = append(pairs, Pair{Caller: w, Method: m, Allowed: policy.Allowed(w, m), Code: st.Code(), Message: st.Message()})
			}
		}
		for _, r := range policy.GatewayRoutes {
			verb, path, _ := strings.Cut(r.Example, " ")
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			var body io.Reader
			if verb == http.MethodPost {
				body = strings.NewReader("{}")
			}
			req, err := http.NewRequestWithContext(cctx, verb, p.GatewayURL+path, body)
			if err != nil {
				cancel()
				c.Close()
				return nil, err
			}
			pair := Pair{Caller: w, Method: r.Example, Allowed: r.HTTPAllowed(w)}
			resp, err := c.HTTP.Do(req)
			if err != nil {
				pair.Message = err.Error()
			} else {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				pair.HTTPStatus, pair.Message = resp.StatusCode, strings.TrimSpace(string(b))
			}
			cancel()
			pairs = append(pairs, pair)
		}
		c.Close()
	}
	return pairs, nil
}

// AuthzCheck summarizes a sweep as a Check.
func AuthzCheck(pairs []Pair) Check {
	var denied, allowed int
	var wrong []string
	for _, p := range pairs {
		if p.Allowed {
			allowed++
		} else {
			denied++
		}
		if !p.Holds() {
			got := p.Code.String()
			if p.HTTPStatus != 0 {
				got = fmt.Sprint(p.HTTPStatus)
			}
			wrong = append(wrong, fmt.Sprintf("%s → %s: %s %s", p.Caller, p.Method, got, p.Message))
		}
	}
	slices.Sort(wrong)
	return Check{
		Name:   "authorization matrix holds",
		OK:     len(wrong) == 0,
		Detail: fmt.Sprintf("%d denied pairs refused, %d allowed pairs let through; %d wrong %v", denied-countDenied(wrong, pairs), allowed, len(wrong), first(wrong, 3)),
	}
}

func countDenied(wrong []string, pairs []Pair) int {
	n := 0
	for _, p := range pairs {
		if !p.Allowed && !p.Holds() {
			n++
		}
	}
	return n
}
