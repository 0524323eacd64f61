package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/gridmesh/gridmesh/controlplane/registration"
)

// Service meta keys meshd writes on the Consul instances of registrations,
// and reads from every instance in the catalog (ConsulSource).
const (
	metaVersion       = "version"
	metaSPIFFEID      = "spiffe_id"
	metaListenAddress = "listen_address"
	metaTTL           = "ttl"
	// metaRegisteredBy marks an instance written by the registration API.
	metaRegisteredBy = "registered_by"
	registeredBy     = "meshd"
)

// consulMetaValueMax is Consul's limit on a service meta value.
const consulMetaValueMax = 512

// ConsulDeregisterAfter is how long Consul keeps the instance of a
// registration whose TTL ran out before it removes it from the catalog
// (the TTL check's DeregisterCriticalServiceAfter; Consul's minimum).
// meshd stops serving the endpoint as soon as the TTL runs out: it reads
// passing instances only.
const ConsulDeregisterAfter = time.Minute

// consulServiceID is the Consul service ID of the registration of address
// in service: readable, and unique per service and address.
func consulServiceID(service, address string) string {
	sum := sha256.Sum256([]byte(regKey(service, address)))
	return "meshd-" + service + "-" + hex.EncodeToString(sum[:8])
}

// consulRegistry keeps registrations in the Consul catalog through the
// agent API of the Consul agent behind client; a ConsulSource over the same
// Consul reads them back into this replica's snapshot and every other's.
type consulRegistry struct {
	s      *Server
	client *api.Client

	mu   sync.Mutex
	seen []registration.Registration // in the catalog, as the ConsulSource last read it
}

func (r *consulRegistry) store() string { return StoreConsul }

func (r *consulRegistry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *consulRegistry) list() []registration.Registration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]registration.Registration(nil), r.seen...)
}

// seenEndpoint returns the registration of service at address as the
// catalog was last read, or nil.
func (r *consulRegistry) seenEndpoint(service, address string) *Endpoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, reg := range r.seen {
		if reg.Service == service && reg.Address == address {
			ep := endpointOf(reg)
			return &ep
		}
	}
	return nil
}

// observe records the registrations the ConsulSource found in the catalog.
func (r *consulRegistry) observe(regs []registration.Registration) {
	sortRegistrations(regs)
	r.mu.Lock()
	r.seen = regs
	r.mu.Unlock()
}

// add writes reg to Consul as a service instance, with a TTL check when reg
// has a TTL. A renewal writes the same instance again, which passes the
// check and restarts its TTL.
func (r *consulRegistry) add(ctx context.Context, reg registration.Registration, authorize func(prev *Endpoint) *forbidden) (int, error) {
	ep := endpointOf(reg)
	if err := checkEndpoint(ep); err != nil {
		return http.StatusBadRequest, err
	}
	// The owner is who registered it as the catalog was last read: a
	// registration written in the moment since is not seen.
	if f := authorize(r.seenEndpoint(ep.Service, ep.Address)); f != nil {
		return f.code, f
	}
	ttl := time.Duration(reg.TTL)
	meta := map[string]string{metaRegisteredBy: registeredBy}
	for _, f := range []struct{ key, field, value string }{
		{metaVersion, "version", ep.Version},
		{metaSPIFFEID, "spiffe_id", ep.SPIFFEID},
		{metaListenAddress, "listen_address", ep.ListenAddress},
	} {
		if f.value == "" {
			continue
		}
		if len(f.value) > consulMetaValueMax {
			return http.StatusBadRequest, fmt.Errorf("%s is %d bytes; meshd keeps registrations in Consul, whose service meta values are at most %d bytes: use a shorter %s", f.field, len(f.value), consulMetaValueMax, f.field)
		}
		meta[f.key] = f.value
	}
	if ttl > 0 {
		meta[metaTTL] = ttl.String()
	}
	if code, err := r.s.checkEndpointFits(ep); err != nil {
		return code, err
	}
	host, portStr, _ := net.SplitHostPort(ep.Address) // checked by checkEndpoint
	port, _ := strconv.Atoi(portStr)
	weight := int(ep.Weight)
	if weight == 0 {
		weight = 1
	}
	svc := &api.AgentServiceRegistration{
		ID: consulServiceID(ep.Service, ep.Address), Name: ep.Service,
		Address: host, Port: port, Meta: meta,
		Weights: &api.AgentWeights{Passing: weight, Warning: 1},
	}
	if ttl > 0 {
		svc.Check = &api.AgentServiceCheck{
			CheckID: "service:" + svc.ID, Name: "meshd registration TTL",
			TTL: ttl.String(), Status: api.HealthPassing,
			DeregisterCriticalServiceAfter: ConsulDeregisterAfter.String(),
		}
	}
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := r.client.Agent().ServiceRegisterOpts(svc, opts); err != nil {
		// 503: the caller may try another replica, whose Consul agent may
		// answer.
		return http.StatusServiceUnavailable, fmt.Errorf("meshd keeps registrations in Consul and Consul refused or did not answer; nothing was registered, try again: %s", cutText(err.Error()))
	}
	return http.StatusOK, nil
}

func (r *consulRegistry) remove(ctx context.Context, service, address string, authorize func(prev *Endpoint) *forbidden) (int, error) {
	if prev := r.seenEndpoint(service, address); prev != nil {
		if f := authorize(prev); f != nil {
			return f.code, f
		}
	} else if f := authorize(&Endpoint{Service: service, Address: address}); f != nil {
		// Not seen yet: only an operator removes what nobody is known
		// to own.
		return f.code, f
	}
	err := r.client.Agent().ServiceDeregisterOpts(consulServiceID(service, address), (&api.QueryOptions{}).WithContext(ctx))
	var se api.StatusError
	switch {
	case err == nil:
		return http.StatusOK, nil
	case errors.As(err, &se) && se.Code == http.StatusNotFound:
		return http.StatusNotFound, errNotRegistered(service, address)
	default:
		return http.StatusServiceUnavailable, fmt.Errorf("meshd keeps registrations in Consul and Consul refused or did not answer; nothing was deregistered, try again: %s", cutText(err.Error()))
	}
}
