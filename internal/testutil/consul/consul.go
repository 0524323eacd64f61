// Package consul is an in-process fake of the Consul HTTP API, for tests. It
// serves the endpoints that github.com/hashicorp/consul/api calls for service
// registration, TTL health checks, health and catalog queries and Connect
// intentions, on a real loopback listener, with Consul's blocking-query
// semantics:
//
//   - every response carries X-Consul-Index, X-Consul-LastContact and
//     X-Consul-KnownLeader;
//   - ?index=N blocks until the result's index is greater than N or until
//     ?wait (default 5m, at most 10m, plus up to wait/16 of jitter) passes,
//     then answers with the current result either way;
//   - index=0 answers at once.
//
// Agent TTL checks turn critical when their TTL passes without an update, and
// services whose check stays critical for DeregisterCriticalServiceAfter are
// reaped by a periodic reaper, as the Consul agent does (minimum 1m, reaper
// every 30s; both lower for tests through Options).
//
// Stop takes the server down (listener and open connections closed, state
// kept, TTL clocks frozen) and Start brings it back on the same address, like
// an agent restart: TTL checks get a fresh TTL, as a restarted agent gives
// restored checks. Reset drops all state, so indexes go backwards.
//
// Not modelled: ACLs, namespaces and partitions, non-TTL check execution
// (HTTP/TCP/gRPC checks keep the status they were registered with, critical
// by default), prepared queries, KV, hash-based blocking, filtering.
package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Options tune the fake. The zero value behaves like a default Consul agent
// in datacenter "dc1".
type Options struct {
	// Datacenter is the agent's datacenter. Default "dc1".
	Datacenter string
	// OtherDatacenters are further datacenters that ?dc= may name and that
	// /v1/catalog/register may write to. Any other ?dc= fails as Consul does
	// ("No path to datacenter").
	OtherDatacenters []string
	// MinDeregisterCriticalAfter is the floor applied to a check's
	// DeregisterCriticalServiceAfter. Consul's is 1 minute (the default).
	MinDeregisterCriticalAfter time.Duration
	// ReapInterval is how often critical services are reaped. Consul's is
	// 30 seconds (the default).
	ReapInterval time.Duration
	// DefaultAllow is the intention default used by /v1/connect/intentions/check
	// when no intention matches (Consul: the ACL default policy; allow when
	// ACLs are off). Default false: deny.
	DefaultAllow bool
}

// Server is the fake Consul agent. Its methods are safe for concurrent use.
type Server struct {
	t    testing.TB
	opts Options

	mu       sync.Mutex
	addr     string
	ln       net.Listener
	srv      *http.Server
	down     chan struct{} // closed while the server is stopped
	handlers sync.WaitGroup
	downAt   time.Time

	index      uint64
	notify     chan struct{}       // closed and replaced on every change
	services   map[string]*service // by dc + "/" + service ID
	svcIndex   map[string]uint64   // by dc + "/" + service name
	catIndex   map[string]uint64   // services table index, by dc
	intentions map[string]*api.Intention
	ixnIndex   uint64
	ixnSeq     int

	stopJanitor chan struct{}
	janitorDone chan struct{}
}

type service struct {
	dc     string
	node   string
	addr   string // node address
	svc    api.AgentService
	checks []*check
	agent  bool // registered through the agent API (TTL clocks run here)
}

type check struct {
	hc            api.HealthCheck
	ttl           time.Duration
	deadline      time.Time // TTL expiry
	deregAfter    time.Duration
	criticalSince time.Time
}

const nodeName = "fake-node"

// New starts a fake Consul agent on a loopback port and stops it when the
// test ends.
func New(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.Datacenter == "" {
		opts.Datacenter = "dc1"
	}
	if opts.MinDeregisterCriticalAfter == 0 {
		opts.MinDeregisterCriticalAfter = time.Minute
	}
	if opts.ReapInterval == 0 {
		opts.ReapInterval = 30 * time.Second
	}
	s := &Server{
		t:           t,
		opts:        opts,
		index:       1,
		notify:      make(chan struct{}),
		services:    map[string]*service{},
		svcIndex:    map[string]uint64{},
		catIndex:    map[string]uint64{},
		intentions:  map[string]*api.Intention{},
		stopJanitor: make(chan struct{}),
		janitorDone: make(chan struct{}),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("consul fake: listen: %v", err)
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	go s.janitor()
	t.Cleanup(func() {
		s.Stop()
		close(s.stopJanitor)
		<-s.janitorDone
	})
	return s
}

// Addr is the host:port the fake listens on, for api.Config.Address.
func (s *Server) Addr() string { return s.addr }

// Client returns a consul/api client for the fake.
func (s *Server) Client() *api.Client {
	c, err := api.NewClient(&api.Config{Address: s.addr})
	if err != nil {
		s.t.Fatalf("consul fake: client: %v", err)
	}
	return c
}

func (s *Server) serve(ln net.Listener) {
	s.ln = ln
	s.down = make(chan struct{})
	mux := s.routes(s.down)
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.handlers.Add(1) // the Serve goroutine holds the group above zero
		defer s.handlers.Done()
		mux.ServeHTTP(w, r)
	})}
	srv := s.srv
	s.handlers.Add(1)
	go func() {
		defer s.handlers.Done()
		_ = srv.Serve(ln)
	}()
}

// Stop takes the agent down: the listener and every open connection close,
// blocked queries end, and TTL clocks stop. State is kept. Stop blocks until
// every handler has returned. Calling Stop on a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	if s.srv == nil {
		s.mu.Unlock()
		return
	}
	srv := s.srv
	s.srv = nil
	close(s.down)
	s.downAt = time.Now()
	s.mu.Unlock()
	_ = srv.Close()
	s.handlers.Wait()
}

// Start brings a stopped agent back on the same address. TTL checks get a
// fresh TTL from now, as a restarted Consul agent gives its restored checks.
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return
	}
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; {
		ln, err = net.Listen("tcp", s.addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // the port may linger briefly
	}
	if err != nil {
		s.t.Fatalf("consul fake: relisten on %s: %v", s.addr, err)
	}
	now := time.Now()
	down := now.Sub(s.downAt)
	for _, svc := range s.services {
		for _, c := range svc.checks {
			if c.ttl > 0 {
				c.deadline = now.Add(c.ttl)
			}
			if !c.criticalSince.IsZero() {
				c.criticalSince = c.criticalSince.Add(down)
			}
		}
	}
	s.serve(ln)
}

// Reset drops every registration and intention and sets the index back to 1,
// as a Consul cluster rebuilt from scratch would: clients see X-Consul-Index
// go backwards.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.index = 1
	s.services = map[string]*service{}
	s.svcIndex = map[string]uint64{}
	s.catIndex = map[string]uint64{}
	s.intentions = map[string]*api.Intention{}
	s.ixnIndex = 0
	close(s.notify)
	s.notify = make(chan struct{})
}

// SetCheckStatus sets a check's status directly, as if the agent had run it
// (for checks the fake does not execute). It fails the test if there is no
// such check.
func (s *Server) SetCheckStatus(checkID, status string) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	c, svc := s.findCheck(checkID)
	if c == nil {
		s.t.Fatalf("consul fake: no check %q", checkID)
	}
	s.setStatus(svc, c, status, c.hc.Output, time.Now())
}

// changed bumps the index for service name in dc and wakes blocked queries.
// catalog says the services table changed too. Callers hold s.mu.
func (s *Server) changed(dc, name string, catalog bool) {
	s.index++
	if name != "" {
		s.svcIndex[dc+"/"+name] = s.index
	}
	if catalog {
		s.catIndex[dc] = s.index
	}
	close(s.notify)
	s.notify = make(chan struct{})
}

func (s *Server) janitor() {
	defer close(s.janitorDone)
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	lastReap := time.Now()
	for {
		select {
		case <-s.stopJanitor:
			return
		case now := <-tick.C:
			s.mu.Lock()
			if s.srv != nil { // clocks are frozen while the agent is down
				s.expireTTLs(now)
				if now.Sub(lastReap) >= s.opts.ReapInterval {
					lastReap = now
					s.reap(now)
				}
			}
			s.mu.Unlock()
		}
	}
}

func (s *Server) expireTTLs(now time.Time) {
	for _, svc := range s.services {
		for _, c := range svc.checks {
			if c.ttl > 0 && svc.agent && now.After(c.deadline) && c.hc.Status != api.HealthCritical {
				out := "TTL expired"
				if c.hc.Output != "" {
					out += " (last output before timeout follows): " + c.hc.Output
				}
				s.setStatus(svc, c, api.HealthCritical, out, now)
				c.deadline = now.Add(c.ttl) // checked again only after another update
			}
		}
	}
}

func (s *Server) reap(now time.Time) {
	for key, svc := range s.services {
		for _, c := range svc.checks {
			if c.deregAfter > 0 && c.hc.Status == api.HealthCritical && !c.criticalSince.IsZero() && now.Sub(c.criticalSince) >= c.deregAfter {
				delete(s.services, key)
				s.changed(svc.dc, svc.svc.Service, true)
				break
			}
		}
	}
}

func (s *Server) setStatus(svc *service, c *check, status, output string, now time.Time) {
	if c.hc.Status == status && c.hc.Output == output {
		return // Consul does not bump the index for an unchanged check
	}
	if status == api.HealthCritical && c.hc.Status != api.HealthCritical {
		c.criticalSince = now
	}
	if status != api.HealthCritical {
		c.criticalSince = time.Time{}
	}
	c.hc.Status = status
	c.hc.Output = output
	s.changed(svc.dc, svc.svc.Service, false)
	c.hc.ModifyIndex = s.index
}

func (s *Server) findCheck(id string) (*check, *service) {
	for _, svc := range s.services {
		if svc.dc != s.opts.Datacenter {
			continue
		}
		for _, c := range svc.checks {
			if c.hc.CheckID == id {
				return c, svc
			}
		}
	}
	return nil, nil
}

func (s *Server) knownDC(dc string) bool {
	return dc == s.opts.Datacenter || slices.Contains(s.opts.OtherDatacenters, dc)
}

// routes builds the handler for one serving period; down closes when it ends.
func (s *Server) routes(down chan struct{}) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/agent/service/register", s.agentRegister)
	mux.HandleFunc("PUT /v1/agent/service/deregister/{id}", s.agentDeregister)
	mux.HandleFunc("PUT /v1/agent/check/pass/{id}", s.checkTTL(api.HealthPassing))
	mux.HandleFunc("PUT /v1/agent/check/warn/{id}", s.checkTTL(api.HealthWarning))
	mux.HandleFunc("PUT /v1/agent/check/fail/{id}", s.checkTTL(api.HealthCritical))
	mux.HandleFunc("PUT /v1/agent/check/update/{id}", s.checkTTL(""))
	mux.HandleFunc("PUT /v1/catalog/register", s.catalogRegister)
	mux.HandleFunc("PUT /v1/catalog/deregister", s.catalogDeregister)
	mux.HandleFunc("GET /v1/health/service/{name}", s.blocking(down, s.healthService))
	mux.HandleFunc("GET /v1/catalog/services", s.blocking(down, s.catalogServices))
	mux.HandleFunc("GET /v1/connect/intentions", s.blocking(down, s.intentionList))
	mux.HandleFunc("GET /v1/connect/intentions/match", s.blocking(down, s.intentionMatch))
	mux.HandleFunc("GET /v1/connect/intentions/check", s.blocking(down, s.intentionCheck))
	mux.HandleFunc("GET /v1/connect/intentions/exact", s.blocking(down, s.intentionGetExact))
	mux.HandleFunc("PUT /v1/connect/intentions/exact", s.intentionUpsert)
	mux.HandleFunc("DELETE /v1/connect/intentions/exact", s.intentionDeleteExact)
	mux.HandleFunc("POST /v1/connect/intentions", s.intentionCreate)
	return mux
}

// query computes a read result and its index under s.mu. A non-nil error is
// answered with its status code.
type query func(r *http.Request) (index uint64, body any, err error)

type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func fail(code int, format string, args ...any) error {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var he *httpError
	if errors.As(err, &he) {
		code = he.code
	}
	http.Error(w, err.Error(), code)
}

// blocking serves q with Consul's blocking-query semantics.
func (s *Server) blocking(down chan struct{}, q query) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var minIndex uint64
		if v := r.URL.Query().Get("index"); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				http.Error(w, "Invalid index", http.StatusBadRequest)
				return
			}
			minIndex = n
		}
		wait := 5 * time.Minute
		if v := r.URL.Query().Get("wait"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				http.Error(w, "Invalid wait time", http.StatusBadRequest)
				return
			}
			wait = d
		}
		wait = min(wait, 10*time.Minute)
		if wait > 0 {
			wait += rand.N(wait/16 + 1)
		}
		timer := time.NewTimer(wait)
		defer timer.Stop()
		timedOut := false
		for {
			s.mu.Lock()
			if dc := r.URL.Query().Get("dc"); dc != "" && !s.knownDC(dc) {
				s.mu.Unlock()
				http.Error(w, "No path to datacenter", http.StatusInternalServerError)
				return
			}
			idx, body, err := q(r)
			notify := s.notify
			s.mu.Unlock()
			if err != nil {
				writeErr(w, err)
				return
			}
			if idx < 1 {
				idx = 1
			}
			if minIndex == 0 || idx > minIndex || timedOut {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("X-Consul-Index", strconv.FormatUint(idx, 10))
				w.Header().Set("X-Consul-LastContact", "0")
				w.Header().Set("X-Consul-KnownLeader", "true")
				_ = json.NewEncoder(w).Encode(body)
				return
			}
			select {
			case <-notify:
			case <-timer.C:
				timedOut = true
			case <-down:
				return // the connection is being closed
			case <-r.Context().Done():
				return
			}
		}
	}
}

func (s *Server) dc(r *http.Request) string {
	if dc := r.URL.Query().Get("dc"); dc != "" {
		return dc
	}
	return s.opts.Datacenter
}

func decode(r *http.Request, v any) error {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		return fail(http.StatusBadRequest, "Request decode failed: %v", err)
	}
	return nil
}

func (s *Server) agentRegister(w http.ResponseWriter, r *http.Request) {
	var reg api.AgentServiceRegistration
	if err := decode(r, &reg); err != nil {
		writeErr(w, err)
		return
	}
	if reg.Name == "" {
		http.Error(w, "Missing service name", http.StatusBadRequest)
		return
	}
	if reg.ID == "" {
		reg.ID = reg.Name
	}
	specs := reg.Checks
	if reg.Check != nil {
		specs = append(api.AgentServiceChecks{reg.Check}, specs...)
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	key := s.opts.Datacenter + "/" + reg.ID
	old := s.services[key]
	svc := &service{
		dc:    s.opts.Datacenter,
		node:  nodeName,
		addr:  "127.0.0.1",
		agent: true,
		svc: api.AgentService{
			ID: reg.ID, Service: reg.Name, Tags: reg.Tags, Meta: reg.Meta,
			Port: reg.Port, Address: reg.Address, EnableTagOverride: reg.EnableTagOverride,
			Weights: api.AgentWeights{Passing: 1, Warning: 1}, Datacenter: s.opts.Datacenter,
		},
	}
	if reg.Weights != nil {
		svc.svc.Weights = *reg.Weights
	}
	if svc.svc.Tags == nil {
		svc.svc.Tags = []string{}
	}
	if svc.svc.Meta == nil {
		svc.svc.Meta = map[string]string{}
	}
	for i, spec := range specs {
		c := &check{hc: api.HealthCheck{
			Node: nodeName, CheckID: spec.CheckID, Name: spec.Name, Status: spec.Status,
			Notes: spec.Notes, ServiceID: reg.ID, ServiceName: reg.Name, ServiceTags: svc.svc.Tags,
		}}
		if c.hc.CheckID == "" {
			c.hc.CheckID = "service:" + reg.ID
			if len(specs) > 1 {
				c.hc.CheckID += ":" + strconv.Itoa(i+1)
			}
		}
		if c.hc.Name == "" {
			c.hc.Name = fmt.Sprintf("Service '%s' check", reg.Name)
		}
		switch {
		case spec.TTL != "":
			d, err := time.ParseDuration(spec.TTL)
			if err != nil || d <= 0 {
				http.Error(w, fmt.Sprintf("Invalid check: TTL %q", spec.TTL), http.StatusBadRequest)
				return
			}
			c.ttl = d
			c.deadline = now.Add(d)
			c.hc.Type = "ttl"
		case spec.HTTP != "":
			c.hc.Type = "http"
		case spec.TCP != "":
			c.hc.Type = "tcp"
		case spec.GRPC != "":
			c.hc.Type = "grpc"
		default:
			http.Error(w, "Invalid check: one of TTL, HTTP, TCP, GRPC (the fake's subset) is required", http.StatusBadRequest)
			return
		}
		if spec.DeregisterCriticalServiceAfter != "" {
			d, err := time.ParseDuration(spec.DeregisterCriticalServiceAfter)
			if err != nil {
				http.Error(w, fmt.Sprintf("Invalid check: DeregisterCriticalServiceAfter %q", spec.DeregisterCriticalServiceAfter), http.StatusBadRequest)
				return
			}
			c.deregAfter = max(d, s.opts.MinDeregisterCriticalAfter)
		}
		if c.hc.Status == "" {
			c.hc.Status = api.HealthCritical
			// A re-registered check keeps its current status, as the agent does.
			if old != nil {
				for _, oc := range old.checks {
					if oc.hc.CheckID == c.hc.CheckID {
						c.hc.Status, c.hc.Output, c.criticalSince = oc.hc.Status, oc.hc.Output, oc.criticalSince
					}
				}
			}
		}
		if c.hc.Status == api.HealthCritical && c.criticalSince.IsZero() {
			c.criticalSince = now
		}
		svc.checks = append(svc.checks, c)
	}
	s.services[key] = svc
	s.changed(svc.dc, reg.Name, true)
	svc.svc.CreateIndex, svc.svc.ModifyIndex = s.index, s.index
	if old != nil {
		svc.svc.CreateIndex = old.svc.CreateIndex
		if old.svc.Service != reg.Name {
			s.changed(svc.dc, old.svc.Service, true)
		}
	}
	for _, c := range svc.checks {
		c.hc.CreateIndex, c.hc.ModifyIndex = s.index, s.index
	}
}

func (s *Server) agentDeregister(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	defer s.mu.Unlock()
	key := s.opts.Datacenter + "/" + id
	svc, ok := s.services[key]
	if !ok {
		http.Error(w, fmt.Sprintf("Unknown service ID %q. Ensure that the service ID is passed, not the service name.", id), http.StatusNotFound)
		return
	}
	delete(s.services, key)
	s.changed(svc.dc, svc.svc.Service, true)
}

// checkTTL serves pass/warn/fail (fixed status, ?note=) and update (status
// and output from the JSON body).
func (s *Server) checkTTL(fixed string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		status := fixed
		id := r.PathValue("id")
		output := r.URL.Query().Get("note")
		if status == "" {
			var u struct{ Status, Output string }
			if err := decode(r, &u); err != nil {
				writeErr(w, err)
				return
			}
			switch u.Status {
			case api.HealthPassing, api.HealthWarning, api.HealthCritical:
			default:
				http.Error(w, fmt.Sprintf("Invalid check status: %q", u.Status), http.StatusBadRequest)
				return
			}
			status, output = u.Status, u.Output
		}
		now := time.Now()
		s.mu.Lock()
		defer s.mu.Unlock()
		c, svc := s.findCheck(id)
		if c == nil {
			http.Error(w, fmt.Sprintf("Unknown check ID %q. Ensure that the check ID is passed, not the check name.", id), http.StatusNotFound)
			return
		}
		if c.ttl == 0 {
			http.Error(w, fmt.Sprintf("CheckID %q does not have associated TTL", id), http.StatusInternalServerError)
			return
		}
		c.deadline = now.Add(c.ttl) // any update is a heartbeat
		s.setStatus(svc, c, status, output, now)
	}
}

func (s *Server) catalogRegister(w http.ResponseWriter, r *http.Request) {
	var reg api.CatalogRegistration
	if err := decode(r, &reg); err != nil {
		writeErr(w, err)
		return
	}
	if reg.Datacenter == "" {
		reg.Datacenter = s.opts.Datacenter
	}
	if reg.Node == "" || reg.Service == nil || reg.Service.Service == "" {
		http.Error(w, "Must provide node and service (the fake supports service registrations only)", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.knownDC(reg.Datacenter) {
		http.Error(w, "No path to datacenter", http.StatusInternalServerError)
		return
	}
	as := *reg.Service
	if as.ID == "" {
		as.ID = as.Service
	}
	as.Datacenter = reg.Datacenter
	svc := &service{dc: reg.Datacenter, node: reg.Node, addr: reg.Address, svc: as}
	checks := reg.Checks
	if reg.Check != nil {
		checks = append(checks, &api.HealthCheck{CheckID: reg.Check.CheckID, Name: reg.Check.Name, Status: reg.Check.Status, ServiceID: reg.Check.ServiceID})
	}
	for _, hc := range checks {
		c := &check{hc: *hc}
		c.hc.Node = reg.Node
		if c.hc.Status == "" {
			c.hc.Status = api.HealthCritical
		}
		if c.hc.ServiceID != "" {
			c.hc.ServiceName = as.Service
		}
		svc.checks = append(svc.checks, c)
	}
	s.services[reg.Datacenter+"/"+as.ID] = svc
	s.changed(svc.dc, as.Service, true)
	svc.svc.CreateIndex, svc.svc.ModifyIndex = s.index, s.index
	_, _ = w.Write([]byte("true"))
}

func (s *Server) catalogDeregister(w http.ResponseWriter, r *http.Request) {
	var dereg api.CatalogDeregistration
	if err := decode(r, &dereg); err != nil {
		writeErr(w, err)
		return
	}
	if dereg.Datacenter == "" {
		dereg.Datacenter = s.opts.Datacenter
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := dereg.Datacenter + "/" + dereg.ServiceID
	if svc, ok := s.services[key]; ok {
		delete(s.services, key)
		s.changed(svc.dc, svc.svc.Service, true)
	}
	_, _ = w.Write([]byte("true"))
}

func (s *Server) healthService(r *http.Request) (uint64, any, error) {
	name := r.PathValue("name")
	dc := s.dc(r)
	q := r.URL.Query()
	tags := q["tag"]
	_, passing := q["passing"]
	if v := q.Get("passing"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return 0, nil, fail(http.StatusBadRequest, "Invalid value for ?passing")
		}
		passing = b
	}
	out := []*api.ServiceEntry{}
	for _, svc := range s.services {
		if svc.dc != dc || svc.svc.Service != name {
			continue
		}
		if !hasAll(svc.svc.Tags, tags) {
			continue
		}
		checks := api.HealthChecks{&api.HealthCheck{
			Node: svc.node, CheckID: "serfHealth", Name: "Serf Health Status",
			Status: api.HealthPassing, Output: "Agent alive and reachable", Type: "",
		}}
		ok := true
		for _, c := range svc.checks {
			hc := c.hc
			checks = append(checks, &hc)
			if hc.Status != api.HealthPassing {
				ok = false
			}
		}
		if passing && !ok {
			continue
		}
		as := svc.svc
		out = append(out, &api.ServiceEntry{
			Node:    &api.Node{ID: "00000000-0000-0000-0000-" + fmt.Sprintf("%012x", len(svc.node)), Node: svc.node, Address: svc.addr, Datacenter: svc.dc, TaggedAddresses: map[string]string{"lan": svc.addr, "wan": svc.addr}, Meta: map[string]string{}},
			Service: &as,
			Checks:  checks,
		})
	}
	// Consul sorts by node name; within the fake's one agent node, by ID.
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node.Node != out[j].Node.Node {
			return out[i].Node.Node < out[j].Node.Node
		}
		return out[i].Service.ID < out[j].Service.ID
	})
	idx := s.svcIndex[dc+"/"+name]
	if idx == 0 {
		idx = s.catIndex[dc]
	}
	return idx, out, nil
}

func hasAll(have, want []string) bool {
	for _, w := range want {
		if !slices.ContainsFunc(have, func(h string) bool { return strings.EqualFold(h, w) }) {
			return false
		}
	}
	return true
}

func (s *Server) catalogServices(r *http.Request) (uint64, any, error) {
	dc := s.dc(r)
	out := map[string][]string{}
	for _, svc := range s.services {
		if svc.dc != dc {
			continue
		}
		tags := out[svc.svc.Service]
		if tags == nil {
			tags = []string{}
		}
		for _, t := range svc.svc.Tags {
			if !slices.Contains(tags, t) {
				tags = append(tags, t)
			}
		}
		sort.Strings(tags)
		out[svc.svc.Service] = tags
	}
	return s.catIndex[dc], out, nil
}

// precedence is Consul's intention precedence without namespaces
// (structs.Intention.UpdatePrecedence with the default namespace).
func precedence(source, destination string) int {
	hi := 9
	if destination == "*" {
		hi = 6
	}
	if source == "*" {
		return hi - 1
	}
	return hi
}

func ixnKey(source, destination string) string { return source + "\x00" + destination }

func (s *Server) sortedIntentions(keep func(*api.Intention) bool) []*api.Intention {
	out := []*api.Intention{}
	for _, ixn := range s.intentions {
		if keep(ixn) {
			c := *ixn
			out = append(out, &c)
		}
	}
	// Consul orders by precedence (highest first), then by the names.
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Precedence != b.Precedence {
			return a.Precedence > b.Precedence
		}
		if a.SourceName != b.SourceName {
			return a.SourceName < b.SourceName
		}
		return a.DestinationName < b.DestinationName
	})
	return out
}

func (s *Server) intentionList(*http.Request) (uint64, any, error) {
	return s.ixnIndex, s.sortedIntentions(func(*api.Intention) bool { return true }), nil
}

func (s *Server) intentionMatch(r *http.Request) (uint64, any, error) {
	q := r.URL.Query()
	by := q.Get("by")
	if by != "source" && by != "destination" {
		return 0, nil, fail(http.StatusBadRequest, "required query parameter 'by' must be 'source' or 'destination'")
	}
	names := q["name"]
	if len(names) == 0 {
		return 0, nil, fail(http.StatusBadRequest, "required query parameter 'name' not set")
	}
	out := map[string][]*api.Intention{}
	for _, name := range names {
		out[name] = s.sortedIntentions(func(ixn *api.Intention) bool {
			field := ixn.DestinationName
			if by == "source" {
				field = ixn.SourceName
			}
			return field == name || field == "*"
		})
	}
	return s.ixnIndex, out, nil
}

func (s *Server) intentionCheck(r *http.Request) (uint64, any, error) {
	src, dst := r.URL.Query().Get("source"), r.URL.Query().Get("destination")
	if src == "" || dst == "" {
		return 0, nil, fail(http.StatusBadRequest, "required query parameters 'source' and 'destination' not set")
	}
	allowed := s.opts.DefaultAllow
	if m := s.sortedIntentions(func(ixn *api.Intention) bool {
		return (ixn.SourceName == src || ixn.SourceName == "*") && (ixn.DestinationName == dst || ixn.DestinationName == "*")
	}); len(m) > 0 {
		allowed = m[0].Action == api.IntentionActionAllow
	}
	return s.ixnIndex, map[string]bool{"Allowed": allowed}, nil
}

func (s *Server) intentionGetExact(r *http.Request) (uint64, any, error) {
	src, dst := r.URL.Query().Get("source"), r.URL.Query().Get("destination")
	ixn, ok := s.intentions[ixnKey(src, dst)]
	if !ok {
		return 0, nil, fail(http.StatusNotFound, "Intention not found")
	}
	return s.ixnIndex, ixn, nil
}

func (s *Server) putIntention(ixn *api.Intention) error {
	if ixn.SourceName == "" || ixn.DestinationName == "" {
		return fail(http.StatusBadRequest, "Intention source and destination names are required")
	}
	if len(ixn.Permissions) == 0 && ixn.Action != api.IntentionActionAllow && ixn.Action != api.IntentionActionDeny {
		return fail(http.StatusBadRequest, "Intention action must be set to 'allow' or 'deny'")
	}
	if len(ixn.Permissions) > 0 && ixn.Action != "" {
		return fail(http.StatusBadRequest, "Intention action must not be set when permissions are present")
	}
	now := time.Now().UTC()
	key := ixnKey(ixn.SourceName, ixn.DestinationName)
	s.index++
	if old, ok := s.intentions[key]; ok {
		ixn.ID, ixn.CreateIndex, ixn.CreatedAt = old.ID, old.CreateIndex, old.CreatedAt
	} else {
		s.ixnSeq++
		ixn.ID = fmt.Sprintf("00000000-0000-4000-8000-%012d", s.ixnSeq)
		ixn.CreateIndex, ixn.CreatedAt = s.index, now
	}
	if ixn.SourceType == "" {
		ixn.SourceType = api.IntentionSourceConsul
	}
	ixn.SourceNS, ixn.DestinationNS = api.IntentionDefaultNamespace, api.IntentionDefaultNamespace
	ixn.Precedence = precedence(ixn.SourceName, ixn.DestinationName)
	ixn.ModifyIndex, ixn.UpdatedAt = s.index, now
	s.intentions[key] = ixn
	s.ixnIndex = s.index
	close(s.notify)
	s.notify = make(chan struct{})
	return nil
}

func (s *Server) intentionUpsert(w http.ResponseWriter, r *http.Request) {
	var ixn api.Intention
	if err := decode(r, &ixn); err != nil {
		writeErr(w, err)
		return
	}
	ixn.SourceName, ixn.DestinationName = r.URL.Query().Get("source"), r.URL.Query().Get("destination")
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.putIntention(&ixn); err != nil {
		writeErr(w, err)
		return
	}
	_, _ = w.Write([]byte("true"))
}

func (s *Server) intentionCreate(w http.ResponseWriter, r *http.Request) {
	var ixn api.Intention
	if err := decode(r, &ixn); err != nil {
		writeErr(w, err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.intentions[ixnKey(ixn.SourceName, ixn.DestinationName)]; ok {
		http.Error(w, "duplicate intention found", http.StatusInternalServerError)
		return
	}
	if err := s.putIntention(&ixn); err != nil {
		writeErr(w, err)
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"ID": ixn.ID})
}

func (s *Server) intentionDeleteExact(w http.ResponseWriter, r *http.Request) {
	key := ixnKey(r.URL.Query().Get("source"), r.URL.Query().Get("destination"))
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.intentions[key]; ok {
		delete(s.intentions, key)
		s.index++
		s.ixnIndex = s.index
		close(s.notify)
		s.notify = make(chan struct{})
	}
	_, _ = w.Write([]byte("true"))
}

// WaitServe is a convenience for tests that need the fake reachable: it
// polls until a request succeeds or ctx ends.
func (s *Server) WaitServe(ctx context.Context) error {
	c := s.Client()
	for {
		if _, _, err := c.Catalog().Services((&api.QueryOptions{}).WithContext(ctx)); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("consul fake: not serving: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
