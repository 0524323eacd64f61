package controlplane

import (
	"fmt"
	"sort"
)

// SetSource replaces what one dynamic source ("kubernetes", ...) feeds
// the server: services with their policies (routes, retries, timeouts,
// balancing, authorization) and endpoints, applied together in one
// snapshot. It is SetEndpoints for a source that also knows policy.
//
// The services are validated as a config file's are (with mTLS assumed,
// so authorization is allowed; it takes effect when the config sets mtls:
// true); a bad set is refused with a *ConfigError and the source's
// previous services and endpoints stay in force. A service the config
// file also defines takes the file's settings: the file is the operator's
// override. Two sources naming one service: the one whose name sorts first
// wins. Services must not list endpoints of their own: a source's
// endpoints come in eps.
//
// Safe for concurrent use. An update that changes nothing publishes
// nothing (snapshot versions are content hashes).
func (s *Server) SetSource(source string, services []Service, eps []Endpoint) error {
	if problems := validate(&Config{MTLS: true, Services: services}); len(problems) > 0 {
		err := &ConfigError{File: source, Problems: problems}
		s.reject(err)
		return err
	}
	for i, svc := range services {
		n := len(svc.Endpoints)
		for _, v := range svc.Versions {
			n += len(v.Endpoints)
		}
		if n > 0 {
			err := &ConfigError{File: source, Problems: []Problem{{
				Field:   fmt.Sprintf("services[%d].endpoints", i),
				Message: "a source's services list no endpoints of their own; pass them as the source's endpoints",
			}}}
			s.reject(err)
			return err
		}
	}
	s.mu.Lock()
	if s.sourceServices == nil {
		s.sourceServices = map[string][]Service{}
	}
	prevSvcs, hadSvcs := s.sourceServices[source]
	prevEps, hadEps := s.sources[source]
	s.sourceServices[source] = append([]Service(nil), services...)
	s.sources[source] = append([]Endpoint(nil), eps...)
	err := s.rebuildLocked()
	if err != nil {
		if hadSvcs {
			s.sourceServices[source] = prevSvcs
		} else {
			delete(s.sourceServices, source)
		}
		if hadEps {
			s.sources[source] = prevEps
		} else {
			delete(s.sources, source)
		}
	}
	s.mu.Unlock()
	if err != nil {
		s.reject(err)
	}
	return err
}

// mergedConfigLocked is the config with the sources' services added after
// the file's; s.mu is held. A name already taken (by the file, or by a
// source sorting earlier) keeps its first definition.
func (s *Server) mergedConfigLocked() *Config {
	if len(s.sourceServices) == 0 {
		return s.cfg
	}
	merged := &Config{}
	if s.cfg != nil {
		merged.MTLS = s.cfg.MTLS
		merged.Services = append(merged.Services, s.cfg.Services...)
	}
	taken := make(map[string]bool, len(merged.Services))
	for _, svc := range merged.Services {
		taken[svc.Name] = true
	}
	names := make([]string, 0, len(s.sourceServices))
	for n := range s.sourceServices {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for _, svc := range s.sourceServices[n] {
			if !taken[svc.Name] {
				taken[svc.Name] = true
				merged.Services = append(merged.Services, svc)
			}
		}
	}
	return merged
}
