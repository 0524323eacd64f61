package security

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// defaultIdentityWait is how long the identity sources wait for their first
// SVID when the caller's context has no deadline: 30 seconds.
const defaultIdentityWait = 30 * time.Second

// WorkloadAPIConfig configures NewWorkloadAPISource. The zero value reads the
// socket named by SPIFFE_ENDPOINT_SOCKET and takes the first SVID offered.
type WorkloadAPIConfig struct {
	// Address of the Workload API, e.g. "unix:///run/spire/agent.sock".
	// Default: the SPIFFE_ENDPOINT_SOCKET environment variable.
	Address string
	// ExpectedID, when set, picks the SVID with this ID among those the
	// agent offers, and construction waits until it is offered.
	ExpectedID spiffeid.ID
	// Logger receives the Workload API client's reconnect messages. Default:
	// silent.
	Logger *slog.Logger
}

// WorkloadAPISource is a Source fed by the SPIFFE Workload API (a SPIRE
// agent, or `meshd dev`). It follows rotations and bundle changes pushed by
// the agent and keeps the last ones it got while the agent is away. Its
// Close (go-spiffe's) ends the stream and is safe to call more than once;
// after it, GetX509SVID and GetX509BundleForTrustDomain return an error.
// Safe for concurrent use.
type WorkloadAPISource struct {
	*workloadapi.X509Source
	addr string
}

// NewWorkloadAPISource connects to the Workload API and blocks until the
// first SVID (with cfg.ExpectedID, when set) arrives. When ctx ends first, or
// after 30 seconds if ctx has no deadline, it fails with an error
// that names the socket and the expected ID.
func NewWorkloadAPISource(ctx context.Context, cfg WorkloadAPIConfig) (*WorkloadAPISource, error) {
	addr := cfg.Address
	if addr == "" {
		addr = os.Getenv("SPIFFE_ENDPOINT_SOCKET")
	}
	if addr == "" {
		return nil, errors.New("security: no Workload API address: set SPIFFE_ENDPOINT_SOCKET (e.g. unix:///run/spire/agent.sock) or WorkloadAPIConfig.Address")
	}
	if err := workloadapi.ValidateAddress(addr); err != nil {
		return nil, fmt.Errorf("security: Workload API address %q: %w (want e.g. unix:///run/spire/agent.sock)", addr, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultIdentityWait)
		defer cancel()
	}
	clientOpts := []workloadapi.ClientOption{workloadapi.WithAddr(addr)}
	if cfg.Logger != nil {
		clientOpts = append(clientOpts, workloadapi.WithLogger(slogAdapter{cfg.Logger.With("component", "workloadapi")}))
	}
	opts := []workloadapi.X509SourceOption{workloadapi.WithClientOptions(clientOpts...)}
	if !cfg.ExpectedID.IsZero() {
		want := cfg.ExpectedID
		opts = append(opts, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.ID == want {
					return s
				}
			}
			return nil
		}))
	}
	src, err := workloadapi.NewX509Source(ctx, opts...)
	if err != nil {
		return nil, identityWaitError(addr, cfg.ExpectedID, err)
	}
	s := &WorkloadAPISource{X509Source: src, addr: addr}
	if cfg.ExpectedID.IsZero() {
		return s, nil
	}
	// The picker returns nil until the agent offers the expected ID.
	for {
		if svid, err := src.GetX509SVID(); err == nil && svid != nil {
			return s, nil
		}
		if err := src.WaitUntilUpdated(ctx); err != nil {
			src.Close()
			return nil, identityWaitError(addr, cfg.ExpectedID, err)
		}
	}
}

// GetX509SVID returns the current SVID, or an error when the agent has not
// offered the expected ID.
func (s *WorkloadAPISource) GetX509SVID() (*x509svid.SVID, error) {
	svid, err := s.X509Source.GetX509SVID()
	if err == nil && svid == nil {
		return nil, fmt.Errorf("security: the Workload API at %s offers no SVID with the expected ID", s.addr)
	}
	return svid, err
}

func identityWaitError(addr string, want spiffeid.ID, err error) error {
	wantText := "any SPIFFE ID"
	if !want.IsZero() {
		wantText = want.String()
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("security: no X.509-SVID (%s) from the Workload API at %s before the deadline: check that the agent (SPIRE or `meshd dev`) is running on that socket and that this workload is registered for that ID: %w", wantText, addr, err)
	}
	return fmt.Errorf("security: Workload API at %s (%s): %w", addr, wantText, err)
}

// slogAdapter lets go-spiffe's logger interface write to a *slog.Logger.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Debugf(format string, args ...any) { a.l.Debug(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Infof(format string, args ...any)  { a.l.Info(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Warnf(format string, args ...any)  { a.l.Warn(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Errorf(format string, args ...any) { a.l.Error(fmt.Sprintf(format, args...)) }
