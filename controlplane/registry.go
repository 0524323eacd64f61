package controlplane

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/gridmesh/gridmesh/controlplane/registration"
)

// registrySource is the endpoint source name of the registration API.
const registrySource = "registration"

type regEntry struct {
	ep      Endpoint
	ttl     time.Duration
	expires time.Time // zero: never
}

// registry holds the endpoints added through the registration API.
type registry struct {
	s       *Server
	mu      sync.Mutex
	entries map[string]regEntry // service|address → entry
}

func newRegistry(s *Server) *registry {
	return &registry{s: s, entries: map[string]regEntry{}}
}

func regKey(service, address string) string { return service + "|" + address }

func (r *registry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.entries)
}

// publish hands the registry's endpoints to the server; r.mu must be held.
func (r *registry) publishLocked() error {
	eps := make([]Endpoint, 0, len(r.entries))
	for _, e := range r.entries {
		eps = append(eps, e.ep)
	}
	sort.Slice(eps, func(i, j int) bool {
		return regKey(eps[i].Service, eps[i].Address) < regKey(eps[j].Service, eps[j].Address)
	})
	return r.s.SetEndpoints(registrySource, eps)
}

// add validates and stores a registration.
func (r *registry) add(reg registration.Registration) (int, error) {
	ep := Endpoint{
		Service: reg.Service, Version: reg.Version, Address: reg.Address,
		ListenAddress: reg.ListenAddress, SPIFFEID: reg.SPIFFEID, Weight: reg.Weight,
	}
	if err := checkEndpoint(ep); err != nil {
		return http.StatusBadRequest, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, e := range r.entries {
		if e.ep.Address == ep.Address && e.ep.Service != ep.Service {
			return http.StatusConflict, fmt.Errorf("address %s is registered for service %q; deregister it there first (%s)", ep.Address, e.ep.Service, k)
		}
	}
	key := regKey(ep.Service, ep.Address)
	prev, had := r.entries[key]
	e := regEntry{ep: ep, ttl: time.Duration(reg.TTL)}
	if e.ttl > 0 {
		e.expires = time.Now().Add(e.ttl)
	}
	r.entries[key] = e
	if had && prev.ep == ep {
		return http.StatusOK, nil // renewal: nothing to rebuild
	}
	if err := r.publishLocked(); err != nil {
		if had {
			r.entries[key] = prev
		} else {
			delete(r.entries, key)
		}
		return http.StatusConflict, err
	}
	return http.StatusOK, nil
}

func (r *registry) remove(service, address string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := regKey(service, address)
	if _, ok := r.entries[key]; !ok {
		return false
	}
	delete(r.entries, key)
	_ = r.publishLocked() // removing cannot create a conflict
	return true
}

func (r *registry) list() []registration.Registration {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]registration.Registration, 0, len(r.entries))
	for _, e := range r.entries {
		out = append(out, registration.Registration{
			Service: e.ep.Service, Version: e.ep.Version, Address: e.ep.Address,
			ListenAddress: e.ep.ListenAddress, SPIFFEID: e.ep.SPIFFEID, Weight: e.ep.Weight,
			TTL: registration.Duration(e.ttl),
		})
	}
	sort.Slice(out, func(i, j int) bool {
		return regKey(out[i].Service, out[i].Address) < regKey(out[j].Service, out[j].Address)
	})
	return out
}

func (r *registry) expireLoop(stop <-chan struct{}) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			r.mu.Lock()
			changed := false
			for k, e := range r.entries {
				if !e.expires.IsZero() && now.After(e.expires) {
					delete(r.entries, k)
					changed = true
					r.s.log.Info("registration expired", "service", e.ep.Service, "address", e.ep.Address)
				}
			}
			if changed {
				_ = r.publishLocked()
			}
			r.mu.Unlock()
		}
	}
}

// checkEndpoint validates an endpoint from a dynamic source.
func checkEndpoint(ep Endpoint) error {
	if !nameRE.MatchString(ep.Service) {
		return fmt.Errorf("service %q: use lower-case letters, digits, '-', '.' and '_'", ep.Service)
	}
	if ep.Version != "" && !nameRE.MatchString(ep.Version) {
		return fmt.Errorf("version %q: use lower-case letters, digits, '-', '.' and '_'", ep.Version)
	}
	if a, err := endpointAddress(ep.Address, 0); err != nil || a != ep.Address {
		return fmt.Errorf("address %q is not host:port, like 10.0.0.7:8443", ep.Address)
	}
	if ep.ListenAddress != "" {
		if a, err := endpointAddress(ep.ListenAddress, 0); err != nil || a != ep.ListenAddress {
			return fmt.Errorf("listen_address %q is not host:port, like 0.0.0.0:8443", ep.ListenAddress)
		}
	}
	if ep.SPIFFEID != "" {
		if _, err := spiffeid.FromString(ep.SPIFFEID); err != nil {
			return fmt.Errorf("spiffe_id %q is not a SPIFFE ID (%v); write spiffe://<trust-domain>/<path>", ep.SPIFFEID, err)
		}
	}
	return nil
}

// Handler serves meshd's HTTP API: the registration API (/v1/endpoints, see
// package registration), /healthz, /metrics (Prometheus text), and
// /debug/config (the snapshot in force, JSON) and /debug/clients (what each
// connected client was sent). Bind it to a trusted address: registration
// is not authenticated.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/endpoints", func(w http.ResponseWriter, req *http.Request) {
		var reg registration.Registration
		dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&reg); err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("body is not a registration: %w", err))
			return
		}
		if code, err := s.reg.add(reg); err != nil {
			writeErr(w, code, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /v1/endpoints", func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		if !s.reg.remove(q.Get("service"), q.Get("address")) {
			writeErr(w, http.StatusNotFound, fmt.Errorf("nothing registered for service %q at %q", q.Get("service"), q.Get("address")))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/endpoints", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, s.reg.list())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		switch st := s.Stats(); {
		case st.Version == "":
			http.Error(w, "no config yet", http.StatusServiceUnavailable)
		case st.Holding:
			http.Error(w, "starting: holding the first snapshot while servers re-register (startup grace)", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok", st.Version)
		}
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		st := s.Stats()
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# HELP meshd_clients Connected xDS streams.\n# TYPE meshd_clients gauge\nmeshd_clients %d\n", st.Clients)
		fmt.Fprintf(w, "# HELP meshd_pushes_total xDS responses sent.\n# TYPE meshd_pushes_total counter\nmeshd_pushes_total %d\n", st.Pushes)
		fmt.Fprintf(w, "# HELP meshd_nacks_total xDS responses refused by clients.\n# TYPE meshd_nacks_total counter\nmeshd_nacks_total %d\n", st.NACKs)
		fmt.Fprintf(w, "# HELP meshd_rejections_total Inputs refused by validation.\n# TYPE meshd_rejections_total counter\nmeshd_rejections_total %d\n", st.Rejections)
		fmt.Fprintf(w, "# HELP meshd_config_loads_total Configs accepted.\n# TYPE meshd_config_loads_total counter\nmeshd_config_loads_total %d\n", st.ConfigLoads)
		fmt.Fprintf(w, "# HELP meshd_registered_endpoints Endpoints from the registration API.\n# TYPE meshd_registered_endpoints gauge\nmeshd_registered_endpoints %d\n", st.Registered)
		fmt.Fprintf(w, "# HELP meshd_config_info The snapshot version in force.\n# TYPE meshd_config_info gauge\nmeshd_config_info{version=%q} 1\n", st.Version)
	})
	mux.HandleFunc("GET /debug/config", func(w http.ResponseWriter, _ *http.Request) {
		sn := s.Snapshot()
		if sn == nil {
			http.Error(w, "no config yet", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(sn.dumpJSON())
	})
	mux.HandleFunc("GET /debug/clients", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, s.Clients())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

// dumpJSON renders the snapshot as {version, listeners, routes, ...} with
// protojson for the resources.
func (sn *Snapshot) dumpJSON() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "{\"version\":%q,\"type_versions\":", sn.Version)
	tv, _ := json.Marshal(sn.TypeVersions)
	b.Write(tv)
	section := func(name string, msgs []proto.Message) {
		fmt.Fprintf(&b, ",%q:[", name)
		for i, m := range msgs {
			if i > 0 {
				b.WriteByte(',')
			}
			j, _ := protojson.Marshal(m)
			b.Write(j)
		}
		b.WriteByte(']')
	}
	section("listeners", toMsgs(sn.Listeners))
	section("routes", toMsgs(sn.Routes))
	section("clusters", toMsgs(sn.Clusters))
	section("endpoints", toMsgs(sn.Endpoints))
	b.WriteByte('}')
	return []byte(b.String())
}
