package discovery

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/serviceconfig"
)

// ringHashName is gridmesh's consistent-hash policy. grpc-go's
// ring_hash_experimental (Envoy's algorithm) gives each endpoint
// ring_size/n ring entries, so when an endpoint leaves, the others gain
// entries and take keys from each other too: with three endpoints, removing
// one moved about a sixth of the other two's keys in
// TestRingHashSameKeySameBackend. This policy gives every endpoint a fixed
// number of entries hashed from its address, so removing an endpoint
// remaps only the keys it held, and adding one takes keys only for itself.
const ringHashName = "gridmesh_ring_hash"

const defaultRingReplicas = 256

func init() { balancer.Register(ringHashBuilder{}) }

type ringHashConfig struct {
	serviceconfig.LoadBalancingConfig `json:"-"`
	// HashHeader is the metadata key whose value is hashed.
	HashHeader string `json:"hashHeader"`
	// Replicas is the number of ring entries per endpoint.
	Replicas int `json:"replicas,omitempty"`
}

type ringHashBuilder struct{}

func (ringHashBuilder) Name() string { return ringHashName }

func (ringHashBuilder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	cfg := &ringHashConfig{}
	if err := json.Unmarshal(js, cfg); err != nil {
		return nil, fmt.Errorf("%s: %v", ringHashName, err)
	}
	cfg.HashHeader = strings.ToLower(cfg.HashHeader)
	if cfg.HashHeader == "" {
		return nil, fmt.Errorf("%s: hashHeader is required", ringHashName)
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = defaultRingReplicas
	}
	if cfg.Replicas < 1 || cfg.Replicas > 4096 {
		return nil, fmt.Errorf("%s: replicas %d: want 1-4096", ringHashName, cfg.Replicas)
	}
	return cfg, nil
}

func (ringHashBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	b := &ringHashBalancer{ClientConn: cc}
	b.child = endpointsharding.NewBalancer(b, opts, balancer.Get(pickfirst.Name).Build, endpointsharding.Options{})
	return b
}

// ringHashBalancer keeps one pick_first child per endpoint (all connected
// eagerly, through endpointsharding) and picks among them by the ring.
type ringHashBalancer struct {
	balancer.ClientConn // for the child's calls, UpdateState overridden
	child               balancer.Balancer

	mu  sync.Mutex
	cfg *ringHashConfig
}

func (b *ringHashBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	cfg, ok := s.BalancerConfig.(*ringHashConfig)
	if !ok {
		return balancer.ErrBadResolverState
	}
	b.mu.Lock()
	b.cfg = cfg
	b.mu.Unlock()
	return b.child.UpdateClientConnState(balancer.ClientConnState{
		ResolverState: pickfirst.EnableHealthListener(s.ResolverState),
	})
}

func (b *ringHashBalancer) ResolverError(err error) { b.child.ResolverError(err) }

func (b *ringHashBalancer) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {}

func (b *ringHashBalancer) ExitIdle() { b.child.ExitIdle() }

func (b *ringHashBalancer) Close() { b.child.Close() }

type ringEntry struct {
	hash  uint64
	child int // index into ringPicker.children
}

// UpdateState receives the children's states from endpointsharding and
// publishes a ring picker over them.
func (b *ringHashBalancer) UpdateState(s balancer.State) {
	b.mu.Lock()
	cfg := b.cfg
	b.mu.Unlock()
	children := endpointsharding.ChildStatesFromPicker(s.Picker)
	if cfg == nil || len(children) == 0 {
		b.ClientConn.UpdateState(s)
		return
	}
	p := &ringPicker{header: cfg.HashHeader, children: children}
	state := connectivity.TransientFailure
	for i, c := range children {
		switch c.State.ConnectivityState {
		case connectivity.Ready:
			state = connectivity.Ready
			p.ready = append(p.ready, i)
		case connectivity.Connecting, connectivity.Idle:
			if state != connectivity.Ready {
				state = connectivity.Connecting
			}
		}
		key := ""
		if len(c.Endpoint.Addresses) > 0 {
			key = c.Endpoint.Addresses[0].Addr
		}
		for r := range cfg.Replicas {
			p.ring = append(p.ring, ringEntry{hash: xxhash.Sum64String(key + "#" + strconv.Itoa(r)), child: i})
		}
	}
	slices.SortFunc(p.ring, func(a, b ringEntry) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return a.child - b.child
	})
	if state == connectivity.TransientFailure {
		b.ClientConn.UpdateState(s) // endpointsharding's picker carries the children's errors
		return
	}
	b.ClientConn.UpdateState(balancer.State{ConnectivityState: state, Picker: p})
}

type ringPicker struct {
	header   string
	children []endpointsharding.ChildState
	ring     []ringEntry
	ready    []int
}

// Pick sends the call to the endpoint owning the key's place on the ring.
// If that endpoint is still connecting the call waits for it, so a key does
// not wander during start-up; if it has failed, the next endpoint along the
// ring that is ready takes the call (only while the owner is down). Calls
// without the header go to a random ready endpoint.
func (p *ringPicker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	md, _ := metadata.FromOutgoingContext(info.Ctx)
	vals := md.Get(p.header)
	if len(vals) == 0 {
		if len(p.ready) == 0 {
			return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
		}
		return p.children[p.ready[rand.IntN(len(p.ready))]].State.Picker.Pick(info)
	}
	h := xxhash.Sum64String(strings.Join(vals, ","))
	start, _ := slices.BinarySearchFunc(p.ring, h, func(e ringEntry, h uint64) int {
		switch {
		case e.hash < h:
			return -1
		case e.hash > h:
			return 1
		}
		return 0
	})
	waiting := false
	for i := range p.ring {
		c := p.children[p.ring[(start+i)%len(p.ring)].child]
		switch c.State.ConnectivityState {
		case connectivity.Ready:
			return c.State.Picker.Pick(info)
		case connectivity.Idle, connectivity.Connecting:
			// endpointsharding reconnects idle children by itself.
			waiting = true
		}
		if waiting && i == 0 {
			return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
		}
	}
	return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
}
