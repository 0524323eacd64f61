package discovery

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Service describes the instance Register puts in Consul.
type Service struct {
	// Name is the Consul service name. Required.
	Name string
	// ID is the instance ID, unique on the agent. Default
	// "<name>-<address>:<port>" (the host name when Address is empty).
	ID string
	// Address and Port are where the instance serves. Port is required; an
	// empty Address means the agent's node address.
	Address string
	Port    int
	Tags    []string
	Meta    map[string]string
	// SPIFFEID is the identity the instance presents, advertised in meta
	// spiffe_id so clients refuse anyone else. Zero: ServiceID(TrustDomain,
	// Name) when Config.TrustDomain is set, else nothing is advertised.
	SPIFFEID spiffeid.ID
	// TTL is the health check's TTL; the instance heartbeats every TTL/3.
	// Default 10s.
	TTL time.Duration
	// DeregisterCriticalAfter makes Consul remove the instance once its
	// check has been critical this long, so a crashed instance disappears
	// (it stops receiving calls as soon as its TTL lapses). Default 1m,
	// Consul's minimum.
	DeregisterCriticalAfter time.Duration
}

// Registration is a registered instance that keeps its TTL check passing.
// Its methods are safe for concurrent use.
type Registration struct {
	r       *Registry
	agent   *api.Agent
	reg     *api.AgentServiceRegistration
	checkID string
	ttl     time.Duration

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
	// lost: the agent lost the instance and registering it again got no
	// answer; the heartbeat goroutine's alone.
	lost bool

	mu       sync.Mutex
	draining bool
	closed   bool
}

// Register registers svc with the Consul agent, its TTL check passing, and
// heartbeats until Drain or Close. It blocks until the agent accepted the
// registration or ctx ends.
//
// When a heartbeat fails because the agent no longer knows the check (an
// agent that lost its state), the instance registers itself again.
func (r *Registry) Register(ctx context.Context, svc Service) (*Registration, error) {
	if r.cfg.Consul == nil {
		return nil, fmt.Errorf("%w: Register %q", ErrNoConsul, svc.Name)
	}
	if svc.Name == "" {
		return nil, errors.New("discovery: Service.Name is required")
	}
	if svc.Port <= 0 || svc.Port > 65535 {
		return nil, fmt.Errorf("discovery: Service.Port %d: want 1-65535", svc.Port)
	}
	if svc.TTL < 0 || svc.DeregisterCriticalAfter < 0 {
		return nil, fmt.Errorf("discovery: Service.TTL %v and DeregisterCriticalAfter %v must not be negative", svc.TTL, svc.DeregisterCriticalAfter)
	}
	if svc.TTL == 0 {
		svc.TTL = 10 * time.Second
	}
	if svc.DeregisterCriticalAfter == 0 {
		svc.DeregisterCriticalAfter = time.Minute
	}
	if svc.ID == "" {
		host := svc.Address
		if host == "" {
			host, _ = os.Hostname()
		}
		svc.ID = svc.Name + "-" + net.JoinHostPort(host, strconv.Itoa(svc.Port))
	}
	meta := maps.Clone(svc.Meta)
	if meta == nil {
		meta = map[string]string{}
	}
	id := svc.SPIFFEID
	if id.IsZero() && !r.cfg.TrustDomain.IsZero() {
		var err error
		if id, err = ServiceID(r.cfg.TrustDomain, svc.Name); err != nil {
			return nil, err
		}
	}
	if !id.IsZero() {
		meta[MetaSPIFFEID] = id.String()
	}
	g := &Registration{
		r:       r,
		agent:   r.cfg.Consul.Agent(),
		checkID: "service:" + svc.ID,
		ttl:     svc.TTL,
		done:    make(chan struct{}),
		reg: &api.AgentServiceRegistration{
			ID: svc.ID, Name: svc.Name, Address: svc.Address, Port: svc.Port,
			Tags: svc.Tags, Meta: meta,
			Check: &api.AgentServiceCheck{
				CheckID:                        "service:" + svc.ID,
				Name:                           "gridmesh TTL heartbeat",
				TTL:                            durationString(svc.TTL),
				Status:                         api.HealthPassing,
				DeregisterCriticalServiceAfter: durationString(svc.DeregisterCriticalAfter),
			},
		},
	}
	if err := g.agent.ServiceRegisterOpts(g.reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		var se api.StatusError
		if errors.As(err, &se) && se.Code == http.StatusForbidden {
			return nil, &aclError{service: svc.Name, cause: se}
		}
		return nil, fmt.Errorf("discovery: register %q with consul: %w", svc.ID, err)
	}
	r.emit(Event{Kind: Registered, Target: svc.ID})
	g.stop = make(chan struct{})
	go g.heartbeat()
	return g, nil
}

func durationString(d time.Duration) string { return d.String() }

// aclError is a registration Consul refused (403): the token lacks the
// permission, or Consul does not know the token at all.
type aclError struct {
	service string
	cause   api.StatusError
}

func (e *aclError) Error() string {
	said := strings.TrimSpace(e.cause.Body)
	if strings.Contains(said, "ACL not found") {
		return fmt.Sprintf("discovery: register %q: Consul does not know the token (check the token api.Config.Token or CONSUL_HTTP_TOKEN carries; Consul said: %s)", e.service, said)
	}
	return fmt.Sprintf("discovery: register %q: the Consul token lacks service:write on %q; grant it with the ACL policy rule `service %q { policy = \"write\" }` (Consul said: %s)", e.service, e.service, e.service, said)
}

func (e *aclError) Unwrap() error { return e.cause }

// ID is the registered instance ID.
func (g *Registration) ID() string { return g.reg.ID }

func (g *Registration) heartbeat() {
	defer close(g.done)
	t := time.NewTicker(g.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
		// An update in flight is not cancelled by Drain or Close: a cancelled
		// request may still reach the agent after Drain's, and undo it.
		ctx, cancel := context.WithTimeout(context.Background(), g.ttl)
		err := g.beat(ctx)
		cancel()
		if err != nil {
			g.r.emit(Event{Kind: HeartbeatFailed, Target: g.reg.ID, Err: err})
		}
	}
}

func (g *Registration) beat(ctx context.Context) error {
	err := g.agent.UpdateTTLOpts(g.checkID, "serving", api.HealthPassing, (&api.QueryOptions{}).WithContext(ctx))
	if err == nil {
		if g.lost {
			// A registration again whose answer was lost (a timeout
			// while the agent did register it) shows here.
			g.lost = false
			g.r.emit(Event{Kind: Registered, Target: g.reg.ID})
		}
		return nil
	}
	err = fmt.Errorf("discovery: heartbeat %q: %w", g.checkID, err)
	var se api.StatusError
	if errors.As(err, &se) && (se.Code == 404 || se.Code == 500) {
		// The agent answered but does not know the check: register again.
		if rerr := g.agent.ServiceRegisterOpts(g.reg, api.ServiceRegisterOpts{}.WithContext(ctx)); rerr == nil {
			g.lost = false
			g.r.emit(Event{Kind: Registered, Target: g.reg.ID})
		} else {
			g.lost = true
		}
	}
	return err
}

func (g *Registration) stopHeartbeat() {
	g.stopOnce.Do(func() { close(g.stop) })
	<-g.done
}

// Drain marks the instance failing ("draining") so clients stop picking it,
// and stops the heartbeat; it stays registered until Close. It blocks until
// the agent took the update or ctx ends. Calling it again does nothing.
func (g *Registration) Drain(ctx context.Context) error {
	g.mu.Lock()
	if g.draining || g.closed {
		g.mu.Unlock()
		return nil
	}
	g.draining = true
	g.mu.Unlock()
	g.stopHeartbeat()
	g.r.emit(Event{Kind: Draining, Target: g.reg.ID})
	if err := g.agent.UpdateTTLOpts(g.checkID, "draining", api.HealthCritical, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("discovery: mark %q draining: %w", g.reg.ID, err)
	}
	return nil
}

// Close stops the heartbeat and deregisters the instance, allowing the
// agent 5 seconds. If that fails, the instance still disappears once its
// TTL lapses and DeregisterCriticalAfter passes. It is safe to call more
// than once; later calls return nil.
func (g *Registration) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	g.mu.Unlock()
	g.stopHeartbeat()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := g.agent.ServiceDeregisterOpts(g.reg.ID, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		err = fmt.Errorf("discovery: deregister %q: %w", g.reg.ID, err)
	}
	g.r.emit(Event{Kind: Deregistered, Target: g.reg.ID, Err: err})
	return err
}
