package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// kubernetesSource is the source name of Kubernetes services and
// endpoints in the Server (SetSource) and in logs.
const kubernetesSource = "kubernetes"

// KubernetesConfig says what a KubernetesSource reads.
type KubernetesConfig struct {
	// TrustDomain is the SPIFFE trust domain of the workloads' identities:
	// an endpoint is expected to present
	// spiffe://<TrustDomain>/ns/<namespace>/sa/<service-account>, its
	// pod's, the form SPIRE's controller manager and Istio issue. Required.
	TrustDomain string
	// Namespaces are the namespaces whose Services become mesh services.
	// Empty: every namespace.
	Namespaces []string
	// VersionLabel is the pod label whose value puts an endpoint in a
	// version of its service (for routes and weighted splits declared in
	// the PolicyAnnotation). Default "version".
	VersionLabel string
}

// KubernetesStats are a KubernetesSource's counters.
type KubernetesStats struct {
	// Updates counts the service sets handed to the Server: one per change
	// that changes what meshd serves.
	Updates int64
	// Unchanged counts objects the API server sent again without a change
	// that matters to meshd (a relist after a lost watch, a pod status
	// update); they cause no work.
	Unchanged int64
	// Services and Endpoints are the counts in the last update.
	Services, Endpoints int
}

// KubernetesSource makes Kubernetes the source of truth for services,
// endpoints and identities, read from the API server with client-go's
// shared informers (list, then watch):
//
//   - each Service in the watched namespaces (except type ExternalName) is
//     a mesh service named <service>.<namespace>: clients dial
//     xds:///trading.shop. (Not also xds:///trading within shop: meshd
//     serves every client the same resources, and a short name would be
//     ambiguous between namespaces.) Its port is the only one, or the one
//     named grpc or grpc-*, or with appProtocol grpc, or the one the
//     PortAnnotation names;
//   - its endpoints are those of its EndpointSlices (one address, the
//     slice's target port), each backed by a Pod (targetRef). Ready ones
//     get calls; terminating and not-ready ones get none (sent as DRAINING
//     and UNHEALTHY, see EndpointHealth), except that, as kube-proxy does,
//     when no endpoint is ready the serving terminating ones get calls.
//     An endpoint without a pod, or whose pod is not known yet, is left
//     out: meshd cannot name its identity;
//   - an endpoint's expected SPIFFE ID is its pod's service account's,
//     spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>; with
//     mtls: true clients refuse a server presenting another. (xDS names
//     identities per cluster: a client accepts any identity of the
//     cluster's pods at any of its endpoints, as Istio does.);
//   - its version is its pod's VersionLabel;
//   - the service's policy is its PolicyAnnotation (validated like the
//     config file), or the config file's entry of the same name, which
//     wins. A bad annotation is refused and logged with its problems and
//     counted in Stats.Rejections; the service keeps its last good policy,
//     and a service never seen with a good one is left out of the mesh
//     rather than served without its authorization.
//
// One pod address backing two Services serves the first of them (by
// namespace, then name): a server-side listener carries one service's
// authorization. The other Service is served without that endpoint, and a
// warning names both.
//
// While the API server is unreachable meshd keeps serving what it last
// read; when it is back the informers list again, and only what changed is
// pushed (objects sent again unchanged cause no work, and a snapshot that
// changes nothing is not published). Pods, Services and EndpointSlices
// are cached trimmed to the fields meshd reads.
//
// meshd needs list and watch on services, pods and
// endpointslices.discovery.k8s.io, nothing else (deploy/kubernetes has
// the ClusterRole). Create it with NewKubernetesSource; Close it.
type KubernetesSource struct {
	server       *Server
	client       kubernetes.Interface
	td           spiffeid.TrustDomain
	versionLabel string
	log          *slog.Logger

	services, slices, pods []cache.SharedIndexInformer
	regs                   []cache.ResourceEventHandlerRegistration

	kick   chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	updates, unchanged atomic.Int64

	// Owned by the sync loop (and NewKubernetesSource before it starts).
	policies map[string]*policyState // namespace/name → annotation state
	warned   map[string]string       // key → message last logged
	seen     map[string]bool         // keys warned about in this sync
	last     *kubernetesView         // last view handed to the server

	countsMu sync.Mutex
	counts   [2]int // services, endpoints in the last update
}

// policyState is the last PolicyAnnotation value seen on a Service and the
// last good policy.
type policyState struct {
	value  string
	parsed bool
	good   *Service // nil: never good
}

type kubernetesView struct {
	services  []Service
	endpoints []Endpoint
}

// sliceServiceIndex indexes EndpointSlices by namespace/service.
const sliceServiceIndex = "service"

// NewKubernetesSource checks that client may list and watch what meshd
// reads, lists Services, EndpointSlices and Pods, and hands s the first
// set of services and endpoints; then it watches them until Close. It
// blocks until the first set is handed over or ctx ends.
//
// A missing permission fails at once with an error naming each missing
// verb and resource and the user; a cache that cannot be filled before
// ctx ends fails naming what is missing. Safe for concurrent use.
func NewKubernetesSource(ctx context.Context, client kubernetes.Interface, s *Server, cfg KubernetesConfig) (*KubernetesSource, error) {
	if cfg.TrustDomain == "" {
		return nil, errors.New("controlplane: kubernetes: no trust domain; set KubernetesConfig.TrustDomain (meshd serve -trust-domain) to the one of your SPIRE server, as in spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("controlplane: kubernetes: trust domain %s: %w; write a name like cluster.local or example.org", quoteValue(cfg.TrustDomain), err)
	}
	nss := slices.Clone(cfg.Namespaces)
	sort.Strings(nss)
	nss = slices.Compact(nss)
	if len(nss) == 0 {
		nss = []string{metav1.NamespaceAll}
	}
	for _, ns := range nss {
		if ns != "" && !nameRE.MatchString(ns) {
			return nil, fmt.Errorf("controlplane: kubernetes: namespace %s is not a namespace name (lower-case letters, digits and '-')", quoteValue(ns))
		}
	}
	if err := checkPermissions(ctx, client, nss); err != nil {
		return nil, err
	}
	k := &KubernetesSource{
		server:       s,
		client:       client,
		td:           td,
		versionLabel: cfg.VersionLabel,
		log:          s.log.With("source", kubernetesSource),
		kick:         make(chan struct{}, 1),
		policies:     map[string]*policyState{},
		warned:       map[string]string{},
	}
	if k.versionLabel == "" {
		k.versionLabel = "version"
	}
	for _, ns := range nss {
		svc := coreinformers.NewServiceInformer(client, ns, 0, cache.Indexers{})
		sl := discoveryinformers.NewEndpointSliceInformer(client, ns, 0, cache.Indexers{sliceServiceIndex: sliceService})
		pod := coreinformers.NewPodInformer(client, ns, 0, cache.Indexers{})
		for _, inf := range []cache.SharedIndexInformer{svc, sl, pod} {
			if err := k.setup(inf); err != nil {
				return nil, err
			}
		}
		k.services = append(k.services, svc)
		k.slices = append(k.slices, sl)
		k.pods = append(k.pods, pod)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	for _, infs := range [][]cache.SharedIndexInformer{k.services, k.slices, k.pods} {
		for _, inf := range infs {
			k.wg.Add(1)
			go func() { defer k.wg.Done(); inf.RunWithContext(runCtx) }()
		}
	}
	synced := make([]cache.InformerSynced, len(k.regs))
	for i, r := range k.regs {
		synced[i] = r.HasSynced
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		k.Close()
		return nil, fmt.Errorf("controlplane: kubernetes: Services, EndpointSlices and Pods not listed before the deadline (%w); is the API server reachable? (the warnings logged say why not)", context.Cause(ctx))
	}
	// Drop the kicks of the initial list: this sync covers them.
	select {
	case <-k.kick:
	default:
	}
	k.sync()
	k.wg.Add(1)
	go func() { defer k.wg.Done(); k.loop(runCtx) }()
	return k, nil
}

// setup trims what inf caches, logs its watch errors and kicks the sync
// loop on changes.
func (k *KubernetesSource) setup(inf cache.SharedIndexInformer) error {
	if err := inf.SetTransform(trimObject(k.versionLabel)); err != nil {
		return fmt.Errorf("controlplane: kubernetes: %w", err)
	}
	if err := inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		k.log.Warn("kubernetes API: list or watch failed; serving the last services and endpoints read", "err", err)
	}); err != nil {
		return fmt.Errorf("controlplane: kubernetes: %w", err)
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { k.poke() },
		UpdateFunc: func(old, cur any) {
			if sameObject(old, cur) {
				k.unchanged.Add(1)
				return
			}
			k.poke()
		},
		DeleteFunc: func(any) { k.poke() },
	})
	if err != nil {
		return fmt.Errorf("controlplane: kubernetes: %w", err)
	}
	k.regs = append(k.regs, reg)
	return nil
}

func (k *KubernetesSource) poke() {
	select {
	case k.kick <- struct{}{}:
	default: // a sync is already due; it will see this change
	}
}

// loop syncs after changes. Changes that arrive during a sync are taken
// together by the next one.
func (k *KubernetesSource) loop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.kick:
		}
		k.sync()
	}
}

// Close stops watching; the services and endpoints handed to the Server
// stay in force. Safe to call twice.
func (k *KubernetesSource) Close() error {
	k.once.Do(func() {
		if k.cancel != nil {
			k.cancel()
		}
		k.wg.Wait()
	})
	return nil
}

// Stats returns the source's counters.
func (k *KubernetesSource) Stats() KubernetesStats {
	k.countsMu.Lock()
	defer k.countsMu.Unlock()
	return KubernetesStats{Updates: k.updates.Load(), Unchanged: k.unchanged.Load(), Services: k.counts[0], Endpoints: k.counts[1]}
}

// sync computes the view from the caches and hands it to the server if it
// changed.
func (k *KubernetesSource) sync() {
	k.seen = map[string]bool{}
	view := k.compute()
	for key := range k.warned {
		if !k.seen[key] {
			delete(k.warned, key) // resolved: warn again if it comes back
		}
	}
	if k.last != nil && reflect.DeepEqual(k.last, view) {
		return
	}
	if err := k.server.SetSource(kubernetesSource, view.services, view.endpoints); err != nil {
		return // refused, logged and counted by the server; the last view stays
	}
	k.last = view
	k.updates.Add(1)
	k.countsMu.Lock()
	k.counts = [2]int{len(view.services), len(view.endpoints)}
	k.countsMu.Unlock()
}

// warn logs msg for key once, until it is resolved or changes.
func (k *KubernetesSource) warn(key, msg string, args ...any) {
	k.seen[key] = true
	text := fmt.Sprint(msg, args)
	if k.warned[key] == text {
		return
	}
	k.warned[key] = text
	k.log.Warn(msg, args...)
}

// candidate is one endpoint address of a service before deduplication.
type candidate struct {
	ep          Endpoint
	ready       bool
	serving     bool
	terminating bool
}

func (k *KubernetesSource) compute() *kubernetesView {
	var svcs []*corev1.Service
	for _, inf := range k.services {
		for _, o := range inf.GetStore().List() {
			if s, ok := o.(*corev1.Service); ok {
				svcs = append(svcs, s)
			}
		}
	}
	sort.Slice(svcs, func(i, j int) bool {
		if svcs[i].Namespace != svcs[j].Namespace {
			return svcs[i].Namespace < svcs[j].Namespace
		}
		return svcs[i].Name < svcs[j].Name
	})
	view := &kubernetesView{services: []Service{}, endpoints: []Endpoint{}}
	claimed := map[string]string{} // address → mesh service
	present := map[string]bool{}
	for _, svc := range svcs {
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		key := svc.Namespace + "/" + svc.Name
		present[key] = true
		name := svc.Name + "." + svc.Namespace
		if len(name) > maxNameLen || !nameRE.MatchString(name) {
			k.warn("svc-name/"+key, "kubernetes Service left out: its mesh name is not a valid service name", "service", key, "name", name)
			continue
		}
		policy := k.policy(svc, name)
		if policy == nil {
			continue
		}
		port, err := servicePort(svc)
		if err != nil {
			k.warn("svc-port/"+key, "kubernetes Service left out", "service", key, "err", err)
			continue
		}
		view.services = append(view.services, *policy)
		for _, c := range k.endpointsOf(svc, name, port) {
			if owner, ok := claimed[c.Address]; ok {
				k.warn("dup/"+name+"/"+c.Address, "kubernetes endpoint backs two Services; it serves only the first", "address", c.Address, "serves", owner, "left_out_of", name)
				continue
			}
			claimed[c.Address] = name
			view.endpoints = append(view.endpoints, c)
		}
	}
	for key := range k.policies {
		if !present[key] {
			delete(k.policies, key)
		}
	}
	return view
}

// policy returns the mesh service for svc from its PolicyAnnotation, or
// nil if it has none good yet.
func (k *KubernetesSource) policy(svc *corev1.Service, name string) *Service {
	key := svc.Namespace + "/" + svc.Name
	value, ok := svc.Annotations[PolicyAnnotation]
	if !ok {
		delete(k.policies, key)
		return &Service{Name: name}
	}
	st := k.policies[key]
	if st == nil {
		st = &policyState{}
		k.policies[key] = st
	}
	if !st.parsed || st.value != value {
		st.value, st.parsed = value, true
		p, err := ParsePolicyAnnotation("kubernetes Service "+key+" annotation "+PolicyAnnotation, name, value)
		if err != nil {
			k.server.reject(err)
			if st.good == nil {
				k.log.Warn("kubernetes Service left out of the mesh until its policy annotation is fixed (never served without its policy)", "service", key)
			}
		} else {
			st.good = p
		}
	}
	if st.good == nil {
		return nil
	}
	out := *st.good
	return &out
}

// servicePort picks the Service port that carries gRPC.
func servicePort(svc *corev1.Service) (corev1.ServicePort, error) {
	ports := svc.Spec.Ports
	names := make([]string, len(ports))
	for i, p := range ports {
		names[i] = strconv.Itoa(int(p.Port))
		if p.Name != "" {
			names[i] = p.Name + " (" + names[i] + ")"
		}
	}
	if want, ok := svc.Annotations[PortAnnotation]; ok {
		for _, p := range ports {
			if p.Name == want || strconv.Itoa(int(p.Port)) == want {
				return p, nil
			}
		}
		return corev1.ServicePort{}, fmt.Errorf("annotation %s: %s is not a port of the Service; its ports are %s", PortAnnotation, quoteValue(want), strings.Join(names, ", "))
	}
	switch len(ports) {
	case 0:
		return corev1.ServicePort{}, errors.New("the Service has no ports; give it the gRPC port")
	case 1:
		return ports[0], nil
	}
	var grpc []corev1.ServicePort
	for _, p := range ports {
		ap := ""
		if p.AppProtocol != nil {
			ap = *p.AppProtocol
		}
		if p.Name == "grpc" || strings.HasPrefix(p.Name, "grpc-") || ap == "grpc" || ap == "kubernetes.io/h2c" {
			grpc = append(grpc, p)
		}
	}
	if len(grpc) == 1 {
		return grpc[0], nil
	}
	return corev1.ServicePort{}, fmt.Errorf("the Service has ports %s; name the gRPC one grpc (or grpc-<suffix>), or annotate the Service %s: <port name or number>", strings.Join(names, ", "), PortAnnotation)
}

// endpointsOf returns the endpoints of svc (mesh name name) on port, from
// its EndpointSlices, with Kubernetes' readiness rules applied.
func (k *KubernetesSource) endpointsOf(svc *corev1.Service, name string, port corev1.ServicePort) []Endpoint {
	key := svc.Namespace + "/" + svc.Name
	var cands []candidate
	for _, inf := range k.slices {
		objs, _ := inf.GetIndexer().ByIndex(sliceServiceIndex, key)
		for _, o := range objs {
			sl, ok := o.(*discoveryv1.EndpointSlice)
			if !ok || sl.AddressType == discoveryv1.AddressTypeFQDN {
				continue
			}
			var target int32
			for _, p := range sl.Ports {
				if p.Port != nil && (p.Name == nil && port.Name == "" || p.Name != nil && *p.Name == port.Name) {
					target = *p.Port
				}
			}
			if target == 0 {
				continue
			}
			for _, e := range sl.Endpoints {
				c, ok := k.candidate(svc, name, e, target)
				if ok {
					cands = append(cands, c...)
				}
			}
		}
	}
	// One address may appear in two slices while the EndpointSlice
	// controller moves it: keep its best state.
	best := map[string]candidate{}
	rank := func(c candidate) int {
		switch {
		case c.ready:
			return 3
		case c.serving:
			return 2
		case c.terminating:
			return 1
		}
		return 0
	}
	anyReady := false
	for _, c := range cands {
		if b, ok := best[c.ep.Address]; !ok || rank(c) > rank(b) {
			best[c.ep.Address] = c
		}
		anyReady = anyReady || c.ready
	}
	out := make([]Endpoint, 0, len(best))
	for _, c := range best {
		ep := c.ep
		switch {
		case c.ready:
			ep.Health = HealthServing
		case c.serving && c.terminating && !anyReady:
			// kube-proxy's fallback: with no ready endpoint, traffic goes
			// to the terminating ones still serving.
			ep.Health = HealthServing
		case c.terminating:
			ep.Health = HealthDraining
		default:
			ep.Health = HealthUnhealthy
		}
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// candidate turns one EndpointSlice endpoint into endpoints, one per
// address, or says why not (logged).
func (k *KubernetesSource) candidate(svc *corev1.Service, name string, e discoveryv1.Endpoint, port int32) ([]candidate, bool) {
	ref := e.TargetRef
	if ref == nil || ref.Kind != "Pod" {
		k.warn("noref/"+name+"/"+strings.Join(e.Addresses, ","), "kubernetes endpoint left out: it has no pod (targetRef), so meshd cannot name its identity", "service", name, "addresses", e.Addresses)
		return nil, false
	}
	ns := ref.Namespace
	if ns == "" {
		ns = svc.Namespace
	}
	pod := k.pod(ns, ref.Name)
	if pod == nil {
		return nil, false // not listed yet: its add will sync again
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	id, err := spiffeid.FromSegments(k.td, "ns", pod.Namespace, "sa", sa)
	if err != nil {
		k.warn("sa/"+ns+"/"+ref.Name, "kubernetes endpoint left out: its pod's service account does not make a SPIFFE ID", "pod", ns+"/"+ref.Name, "service_account", sa, "err", err)
		return nil, false
	}
	version := pod.Labels[k.versionLabel]
	if version != "" && (len(version) > maxNameLen || !nameRE.MatchString(version)) {
		k.warn("version/"+ns+"/"+ref.Name, "kubernetes pod's version label is not a version name (lower-case letters, digits, '-', '.', '_'); its endpoint is in no version", "pod", ns+"/"+ref.Name, "label", k.versionLabel, "value", version)
		version = ""
	}
	c := candidate{
		ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
		terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
	}
	c.serving = c.ready
	if e.Conditions.Serving != nil {
		c.serving = *e.Conditions.Serving
	}
	if c.terminating {
		c.ready = false // ready is false for terminating endpoints by definition
	}
	var out []candidate
	// Kubernetes gives one address per endpoint (the field is a list for
	// future use); take them all.
	for _, a := range e.Addresses {
		c.ep = Endpoint{Service: name, Version: version, Address: net.JoinHostPort(a, strconv.Itoa(int(port))), SPIFFEID: id.String()}
		if err := checkEndpoint(c.ep); err != nil {
			k.warn("bad/"+name+"/"+a, "kubernetes endpoint left out", "service", name, "err", err)
			continue
		}
		out = append(out, c)
	}
	return out, true
}

func (k *KubernetesSource) pod(ns, name string) *corev1.Pod {
	for _, inf := range k.pods {
		o, ok, _ := inf.GetIndexer().GetByKey(ns + "/" + name)
		if ok {
			if p, ok := o.(*corev1.Pod); ok {
				return p
			}
		}
	}
	return nil
}

// sliceService indexes an EndpointSlice by namespace/service.
func sliceService(obj any) ([]string, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	svc := sl.Labels[discoveryv1.LabelServiceName]
	if svc == "" {
		return nil, nil
	}
	return []string{sl.Namespace + "/" + svc}, nil
}

// trimObject returns the informers' transform: it keeps only the fields
// meshd reads, so a cluster's pods cost a few hundred bytes each.
func trimObject(versionLabel string) cache.TransformFunc {
	return func(obj any) (any, error) {
		switch o := obj.(type) {
		case *corev1.Pod:
			p := &corev1.Pod{ObjectMeta: trimMeta(o.ObjectMeta), Spec: corev1.PodSpec{ServiceAccountName: o.Spec.ServiceAccountName}}
			if v, ok := o.Labels[versionLabel]; ok {
				p.Labels = map[string]string{versionLabel: v}
			}
			return p, nil
		case *corev1.Service:
			s := &corev1.Service{ObjectMeta: trimMeta(o.ObjectMeta), Spec: corev1.ServiceSpec{Type: o.Spec.Type}}
			for _, a := range []string{PolicyAnnotation, PortAnnotation} {
				if v, ok := o.Annotations[a]; ok {
					if s.Annotations == nil {
						s.Annotations = map[string]string{}
					}
					s.Annotations[a] = v
				}
			}
			for _, p := range o.Spec.Ports {
				s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: p.Name, Port: p.Port, AppProtocol: p.AppProtocol})
			}
			return s, nil
		case *discoveryv1.EndpointSlice:
			sl := &discoveryv1.EndpointSlice{ObjectMeta: trimMeta(o.ObjectMeta), AddressType: o.AddressType, Ports: o.Ports}
			if v, ok := o.Labels[discoveryv1.LabelServiceName]; ok {
				sl.Labels = map[string]string{discoveryv1.LabelServiceName: v}
			}
			sl.Endpoints = make([]discoveryv1.Endpoint, len(o.Endpoints))
			for i, e := range o.Endpoints {
				te := discoveryv1.Endpoint{Addresses: e.Addresses, Conditions: e.Conditions}
				if r := e.TargetRef; r != nil {
					te.TargetRef = &corev1.ObjectReference{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name}
				}
				sl.Endpoints[i] = te
			}
			return sl, nil
		}
		return obj, nil // a tombstone (DeletedFinalStateUnknown)
	}
}

func trimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion}
}

// sameObject says whether two trimmed objects differ only in their
// resource version: what a relist, or an update of a field meshd does not
// read, looks like.
func sameObject(a, b any) bool {
	strip := func(o any) any {
		switch v := o.(type) {
		case *corev1.Pod:
			c := *v
			c.ResourceVersion = ""
			return &c
		case *corev1.Service:
			c := *v
			c.ResourceVersion = ""
			return &c
		case *discoveryv1.EndpointSlice:
			c := *v
			c.ResourceVersion = ""
			return &c
		}
		return o
	}
	return reflect.DeepEqual(strip(a), strip(b))
}

// kubernetesResources are what meshd reads, for the permission check.
var kubernetesResources = []struct{ group, resource string }{
	{"", "services"},
	{"discovery.k8s.io", "endpointslices"},
	{"", "pods"},
}

// checkPermissions asks the API server (SelfSubjectAccessReview) whether
// the client may list and watch what meshd reads in nss ("" for all
// namespaces), and returns an error naming each missing permission.
func checkPermissions(ctx context.Context, client kubernetes.Interface, nss []string) error {
	var missing []string
	for _, ns := range nss {
		where := "in all namespaces"
		if ns != "" {
			where = "in namespace " + ns
		}
		for _, r := range kubernetesResources {
			for _, verb := range []string{"list", "watch"} {
				review, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
					Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{
						Namespace: ns, Verb: verb, Group: r.group, Resource: r.resource,
					}},
				}, metav1.CreateOptions{})
				if err != nil {
					return fmt.Errorf("controlplane: kubernetes: check permission to %s %s: %w", verb, r.resource, err)
				}
				if !review.Status.Allowed {
					res := r.resource
					if r.group != "" {
						res += "." + r.group
					}
					missing = append(missing, verb+" "+res+" "+where)
				}
			}
		}
	}
	if len(missing) == 0 {
		return nil
	}
	who := "this client"
	if r, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{}); err == nil && r.Status.UserInfo.Username != "" {
		who = "user " + strconv.Quote(r.Status.UserInfo.Username)
	} else if err != nil && !apierrors.IsForbidden(err) && !apierrors.IsNotFound(err) {
		who = "this client (who it is: " + cutText(err.Error()) + ")"
	}
	return fmt.Errorf("controlplane: kubernetes: %s may not %s; meshd needs list and watch on services, endpointslices.discovery.k8s.io and pods: bind it to the ClusterRole in deploy/kubernetes/meshd.yaml", who, strings.Join(missing, ", "))
}
