package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/gridmesh/gridmesh/controlplane/registration"
)

// registrySource is the endpoint source name of the registration API.
const registrySource = "registration"

// Registration stores: where the registration API keeps what it is told.
const (
	// StoreMemory keeps registrations in the meshd process: a second
	// replica does not see them, and a restart forgets them until servers
	// renew (see WithStartupGrace).
	StoreMemory = registration.StoreMemory
	// StoreConsul keeps registrations in the Consul catalog, where every
	// replica reads them (WithConsulRegistrations).
	StoreConsul = registration.StoreConsul
)

// registrations is where the registration API keeps what it is told: this
// process's memory (memRegistry) or the Consul catalog (consulRegistry).
// Methods return the HTTP status for their error.
//
// add and remove call authorize with the registration they would replace
// or remove (nil: none) before changing anything, and refuse with its
// *forbidden; the memory store calls it under its lock.
type registrations interface {
	add(ctx context.Context, reg registration.Registration, authorize func(prev *Endpoint) *forbidden) (int, error)
	remove(ctx context.Context, service, address string, authorize func(prev *Endpoint) *forbidden) (int, error)
	list() []registration.Registration
	len() int
	store() string
}

// endpointOf is the endpoint a registration adds.
func endpointOf(reg registration.Registration) Endpoint {
	return Endpoint{
		Service: reg.Service, Version: reg.Version, Address: reg.Address,
		ListenAddress: reg.ListenAddress, SPIFFEID: reg.SPIFFEID, Weight: reg.Weight,
	}
}

func registrationOf(ep Endpoint, ttl time.Duration) registration.Registration {
	return registration.Registration{
		Service: ep.Service, Version: ep.Version, Address: ep.Address,
		ListenAddress: ep.ListenAddress, SPIFFEID: ep.SPIFFEID, Weight: ep.Weight,
		TTL: registration.Duration(ttl),
	}
}

func sortRegistrations(regs []registration.Registration) {
	sort.Slice(regs, func(i, j int) bool {
		return regKey(regs[i].Service, regs[i].Address) < regKey(regs[j].Service, regs[j].Address)
	})
}

type regEntry struct {
	ep      Endpoint
	ttl     time.Duration
	expires time.Time // zero: never
}

// memRegistry holds the endpoints added through the registration API in
// this process's memory.
type memRegistry struct {
	s       *Server
	mu      sync.Mutex
	entries map[string]regEntry // service|address → entry
}

func newMemRegistry(s *Server) *memRegistry {
	return &memRegistry{s: s, entries: map[string]regEntry{}}
}

func regKey(service, address string) string { return service + "|" + address }

func (r *memRegistry) store() string { return StoreMemory }

func (r *memRegistry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.entries)
}

// publishLocked hands the registry's endpoints to the server; r.mu must be
// held.
func (r *memRegistry) publishLocked() error {
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
func (r *memRegistry) add(_ context.Context, reg registration.Registration, authorize func(prev *Endpoint) *forbidden) (int, error) {
	ep := endpointOf(reg)
	if err := checkEndpoint(ep); err != nil {
		return http.StatusBadRequest, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, e := range r.entries {
		if e.ep.Address == ep.Address && e.ep.Service != ep.Service {
			return http.StatusConflict, fmt.Errorf("address %s is registered for service %s; deregister it there first (%s)", cutText(ep.Address), quoteValue(e.ep.Service), cutText(k))
		}
	}
	key := regKey(ep.Service, ep.Address)
	prev, had := r.entries[key]
	var prevEP *Endpoint
	if had {
		prevEP = &prev.ep
	}
	if f := authorize(prevEP); f != nil {
		return f.code, f
	}
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

func (r *memRegistry) remove(_ context.Context, service, address string, authorize func(prev *Endpoint) *forbidden) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := regKey(service, address)
	e, ok := r.entries[key]
	if !ok {
		return http.StatusNotFound, errNotRegistered(service, address)
	}
	if f := authorize(&e.ep); f != nil {
		return f.code, f
	}
	delete(r.entries, key)
	_ = r.publishLocked() // removing cannot create a conflict
	return http.StatusOK, nil
}

func errNotRegistered(service, address string) error {
	return fmt.Errorf("nothing registered for service %s at %s", quoteValue(service), quoteValue(address))
}

func (r *memRegistry) list() []registration.Registration {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]registration.Registration, 0, len(r.entries))
	for _, e := range r.entries {
		out = append(out, registrationOf(e.ep, e.ttl))
	}
	sortRegistrations(out)
	return out
}

func (r *memRegistry) expireLoop(stop <-chan struct{}) {
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
	if len(ep.Service) > maxNameLen {
		return fmt.Errorf("service %s is too long; names are at most %d bytes", quoteValue(ep.Service), maxNameLen)
	}
	if len(ep.Version) > maxNameLen {
		return fmt.Errorf("version %s is too long; names are at most %d bytes", quoteValue(ep.Version), maxNameLen)
	}
	if !nameRE.MatchString(ep.Service) {
		return fmt.Errorf("service %s: use lower-case letters, digits, '-', '.' and '_'", quoteValue(ep.Service))
	}
	if ep.Version != "" && !nameRE.MatchString(ep.Version) {
		return fmt.Errorf("version %s: use lower-case letters, digits, '-', '.' and '_'", quoteValue(ep.Version))
	}
	if a, err := endpointAddress(ep.Address, 0); errors.Is(err, errLongHost) {
		return fmt.Errorf("address %w", err)
	} else if err != nil || a != ep.Address {
		return fmt.Errorf("address %s is not host:port, like 10.0.0.7:8443", quoteValue(ep.Address))
	}
	if ep.ListenAddress != "" {
		if a, err := endpointAddress(ep.ListenAddress, 0); err != nil || a != ep.ListenAddress {
			return fmt.Errorf("listen_address %s is not host:port, like 0.0.0.0:8443", quoteValue(ep.ListenAddress))
		}
	}
	if ep.SPIFFEID != "" {
		if err := checkSPIFFEID(ep.SPIFFEID); err != nil {
			return fmt.Errorf("spiffe_id %s is not a SPIFFE ID (%v); write spiffe://<trust-domain>/<path>", quoteValue(ep.SPIFFEID), err)
		}
	}
	return nil
}

// Handler serves meshd's HTTP API: the registration API (/v1/endpoints, see
// package registration), /healthz, /metrics (Prometheus text), and
// /debug/config (the snapshot in force, JSON) and /debug/clients (what each
// connected client was sent).
//
// Under WithMTLS (served by Serve or ServeHTTP) every request needs a
// verified client SVID (401 otherwise), /debug is for operators
// (MTLSConfig.Operators) only, and a registration or deregistration by a
// workload that is not an operator must be of an endpoint whose spiffe_id
// is the caller's own, of a service the config does not give another
// identity, and must not replace another identity's registration. A
// refusal is 403 with {"error": "forbidden by rule R: ...", "rule": R},
// R one of the Rule constants. Under
// WithInsecurePlaintextForLocalDebugging anyone may do anything; with
// neither, every request gets 503. Answers of the registration API carry the header
// registration.StoreHeader: where registrations are kept (StoreMemory, in
// this process only, or StoreConsul, shared by replicas).
//
// A registration (PUT /v1/endpoints) is refused with 415 unless its
// Content-Type is application/json (charset, if given, utf-8), with 413 if
// its body is over registration.MaxBodySize (64 KiB), and with 400 if the
// body is not exactly one JSON object in UTF-8 with the fields of
// registration.Registration, each once, spelt exactly, of the right type,
// and printable ASCII (no NUL, control characters or spaces). Errors name
// the field and quote values cut to a few dozen bytes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/endpoints", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set(registration.StoreHeader, s.reg.store())
		c, f := s.callerOf(req)
		if f != nil {
			writeForbidden(w, f) // before reading a body from nobody
			return
		}
		if err := checkJSONContentType(req.Header.Get("Content-Type")); err != nil {
			writeErr(w, http.StatusUnsupportedMediaType, err)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, registration.MaxBodySize))
		if err != nil {
			if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
				where := ""
				if f := fieldAtCut(body); f != "" {
					where = "; the limit falls in field " + f
				}
				writeErr(w, http.StatusRequestEntityTooLarge, fmt.Errorf("body is over the limit of %d bytes (64 KiB, registration.MaxBodySize) for one registration%s", registration.MaxBodySize, where))
				return
			}
			writeErr(w, http.StatusBadRequest, fmt.Errorf("read body: %w", err))
			return
		}
		reg, err := decodeRegistration(body)
		if err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("body is not a registration: %w", err))
			return
		}
		// The rules that need only the caller and the registration come
		// first, so a refused caller learns nothing of what is registered
		// (the stores' conflict checks would tell it).
		if f := s.mayRegister(c, endpointOf(reg), nil); f != nil {
			writeForbidden(w, f)
			return
		}
		authorize := func(prev *Endpoint) *forbidden { return s.mayRegister(c, endpointOf(reg), prev) }
		if code, err := s.reg.add(req.Context(), reg, authorize); err != nil {
			if f, ok := err.(*forbidden); ok {
				writeForbidden(w, f)
				return
			}
			writeErr(w, code, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /v1/endpoints", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set(registration.StoreHeader, s.reg.store())
		q := req.URL.Query()
		service, address := q.Get("service"), q.Get("address")
		if service == "" || address == "" {
			writeErr(w, http.StatusBadRequest, errors.New("query parameters service and address are required: DELETE /v1/endpoints?service=S&address=A"))
			return
		}
		c, f := s.callerOf(req)
		if f != nil {
			writeForbidden(w, f)
			return
		}
		if code, err := s.reg.remove(req.Context(), service, address, c.mayDeregister); err != nil {
			if f, ok := err.(*forbidden); ok {
				writeForbidden(w, f)
				return
			}
			writeErr(w, code, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/endpoints", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set(registration.StoreHeader, s.reg.store())
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
		fmt.Fprintf(w, "# HELP meshd_streams_total xDS streams opened.\n# TYPE meshd_streams_total counter\nmeshd_streams_total %d\n", st.Streams)
		fmt.Fprintf(w, "# HELP meshd_denied_listeners_total Listener names refused to a stream of another identity.\n# TYPE meshd_denied_listeners_total counter\nmeshd_denied_listeners_total %d\n", st.DeniedListeners)
		fmt.Fprintf(w, "# HELP meshd_nacks_total xDS responses refused by clients.\n# TYPE meshd_nacks_total counter\nmeshd_nacks_total %d\n", st.NACKs)
		fmt.Fprintf(w, "# HELP meshd_rejections_total Inputs refused by validation.\n# TYPE meshd_rejections_total counter\nmeshd_rejections_total %d\n", st.Rejections)
		fmt.Fprintf(w, "# HELP meshd_config_loads_total Configs accepted.\n# TYPE meshd_config_loads_total counter\nmeshd_config_loads_total %d\n", st.ConfigLoads)
		fmt.Fprintf(w, "# HELP meshd_registered_endpoints Endpoints from the registration API.\n# TYPE meshd_registered_endpoints gauge\nmeshd_registered_endpoints %d\n", st.Registered)
		fmt.Fprintf(w, "# HELP meshd_registration_store_info Where the registration API keeps registrations: memory (this replica only) or consul (shared by replicas).\n# TYPE meshd_registration_store_info gauge\nmeshd_registration_store_info{store=%q} 1\n", st.RegistrationStore)
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
	return s.guard(mux)
}

// guard refuses, before the mux's handlers run, requests from no verified
// caller, and requests for /debug from callers who are not operators.
// (The registration handlers decide again: they also decide by the body.)
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, f := s.callerOf(r)
		if f == nil && !c.operator && strings.HasPrefix(r.URL.Path, "/debug/") {
			f = &forbidden{code: http.StatusForbidden, rule: RuleOperatorOnly, msg: fmt.Sprintf(
				"%s shows the config of every identity; the caller %s is not an operator (meshd serve -operator-id)", cutText(r.URL.Path), c.id)}
		}
		if f != nil {
			writeForbidden(w, f)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// checkJSONContentType accepts application/json, with charset utf-8 if a
// charset is given.
func checkJSONContentType(ct string) error {
	if ct == "" {
		return errors.New("no Content-Type; send the registration as Content-Type: application/json")
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return fmt.Errorf("Content-Type %s: send the registration as application/json", quoteValue(ct))
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return fmt.Errorf("Content-Type charset %s: send the registration in utf-8", quoteValue(cs))
	}
	return nil
}

// registrationFields are the JSON fields of registration.Registration.
var registrationFields = []string{"service", "version", "address", "listen_address", "spiffe_id", "weight", "ttl"}

// decodeRegistration decodes body as one registration. It is stricter than
// encoding/json: the body must be valid UTF-8 (json.Unmarshal turns bad
// bytes into U+FFFD), one object and nothing after it, each field spelt
// exactly (json.Unmarshal matches "SERVICE" to service) and given once
// (json.Unmarshal keeps the last of two, where another reader may keep the
// first), not null, of its type, and printable ASCII.
func decodeRegistration(body []byte) (registration.Registration, error) {
	var reg registration.Registration
	if off := invalidUTF8(body); off >= 0 {
		return reg, fmt.Errorf("byte %d is not UTF-8; send JSON in UTF-8", off)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	syntaxErr := func(err error) error {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return errors.New("the JSON object ends early; send one complete object like {\"service\": \"trading\", \"address\": \"10.0.0.7:8443\"}")
		}
		return fmt.Errorf("not valid JSON at byte %d: %s", dec.InputOffset(), cutText(err.Error()))
	}
	tok, err := dec.Token()
	if errors.Is(err, io.EOF) {
		return reg, errors.New("the body is empty; send one JSON object like {\"service\": \"trading\", \"address\": \"10.0.0.7:8443\"}")
	}
	if err != nil {
		return reg, syntaxErr(err)
	}
	if tok != json.Delim('{') {
		return reg, fmt.Errorf("%s is not a JSON object; send one object like {\"service\": \"trading\", \"address\": \"10.0.0.7:8443\"}", jsonKind(tok))
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return reg, syntaxErr(err)
		}
		key := tok.(string) // object keys are strings, or Token fails
		if !slices.Contains(registrationFields, key) {
			return reg, fmt.Errorf("unknown field %s%s; the fields are %s (spelt exactly so)", quoteValue(key), didYouMean(key, registrationFields), strings.Join(registrationFields, ", "))
		}
		if seen[key] {
			return reg, fmt.Errorf("field %s appears twice; send it once", key)
		}
		seen[key] = true
		val, err := dec.Token()
		if err != nil {
			return reg, syntaxErr(err)
		}
		if err := setRegistrationField(&reg, key, val); err != nil {
			return reg, fmt.Errorf("field %s: %w", key, err)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return reg, syntaxErr(err)
	}
	end := int(dec.InputOffset())
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		rest := bytes.TrimLeft(body[end:], " \t\r\n")
		return reg, fmt.Errorf("data after the JSON object (at byte %d); send exactly one object", len(body)-len(rest))
	}
	for _, f := range []string{"service", "address"} {
		if !seen[f] {
			return reg, fmt.Errorf("field %s is missing; a registration names its service and address", f)
		}
	}
	return reg, nil
}

// fieldAtCut names the field whose value a body cut at the size limit
// (prefix) was in, or "".
func fieldAtCut(prefix []byte) string {
	dec := json.NewDecoder(bytes.NewReader(prefix))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	for {
		t, err := dec.Token()
		if err != nil {
			return "" // cut in a key
		}
		key, _ := t.(string)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			if slices.Contains(registrationFields, key) {
				return key
			}
			return quoteValue(key)
		}
	}
}

// setRegistrationField sets the field key of reg from a JSON token.
func setRegistrationField(reg *registration.Registration, key string, val json.Token) error {
	if d, ok := val.(json.Delim); ok {
		if d == '{' {
			return errors.New("an object where a single value is expected")
		}
		return errors.New("an array where a single value is expected")
	}
	if val == nil {
		return errors.New("null; leave the field out instead")
	}
	switch key {
	case "weight":
		n, ok := val.(json.Number)
		if !ok {
			return fmt.Errorf("%s where a number is expected; weight is a whole number from 0 to 4294967295, relative to the service's other endpoints (0: the default, 1)", jsonKind(val))
		}
		w, err := strconv.ParseUint(n.String(), 10, 32)
		if err != nil {
			why := "is not a whole number"
			switch {
			case strings.HasPrefix(n.String(), "-"):
				why = "is negative"
			case errors.Is(err, strconv.ErrRange):
				why = "is too large"
			}
			return fmt.Errorf("%s %s; weight is a whole number from 0 to 4294967295, relative to the service's other endpoints", showNumber(n.String()), why)
		}
		reg.Weight = uint32(w)
		return nil
	}
	str, ok := val.(string)
	if !ok {
		return fmt.Errorf("%s where a string is expected", jsonKind(val))
	}
	if err := checkPrintable(str); err != nil {
		return err
	}
	switch key {
	case "service":
		reg.Service = str
	case "version":
		reg.Version = str
	case "address":
		reg.Address = str
	case "listen_address":
		reg.ListenAddress = str
	case "spiffe_id":
		reg.SPIFFEID = str
	case "ttl":
		d, err := time.ParseDuration(str)
		if err != nil {
			return fmt.Errorf("%s is not a duration; write one like \"10s\"", quoteValue(str))
		}
		if d < 0 {
			return fmt.Errorf("%s is negative; write a duration like \"10s\", or leave ttl out for none", quoteValue(str))
		}
		reg.TTL = registration.Duration(d)
	}
	return nil
}

// checkPrintable refuses a value with a byte outside printable ASCII: the
// values of a registration (names, addresses, SPIFFE IDs, durations) have
// none, and a NUL or a control character is how values are smuggled past
// checks that stop at them.
func checkPrintable(s string) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		var what string
		switch {
		case c == 0:
			what = "a NUL byte"
		case c == ' ':
			what = "a space"
		case c < 0x20 || c == 0x7f:
			what = fmt.Sprintf("a control character (0x%02x)", c)
		case c >= 0x80:
			what = fmt.Sprintf("a byte that is not ASCII (0x%02x)", c)
		default:
			continue
		}
		return fmt.Errorf("%s holds %s at byte %d; registration values are printable ASCII", quoteValue(s), what, i)
	}
	return nil
}

func jsonKind(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '[' {
			return "an array"
		}
		return "an object"
	case string:
		return "a string " + quoteValue(v)
	case json.Number:
		return "the number " + showNumber(v.String())
	case bool:
		return "a boolean"
	default:
		return "null"
	}
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
