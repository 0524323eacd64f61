package meshtel

import (
	"reflect"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// SVIDSource is what a rotation watch reads: an identity source.
type SVIDSource interface {
	GetX509SVID() (*x509svid.SVID, error)
}

// Rotations watches identity sources for SVID rotations, one watch per
// source however many servers and clients of its owner share it, so a
// rotation counts once. Its owner is explicit (a Hub, or the mesh's admin
// endpoint): two owners share nothing. The zero value is ready; safe for
// concurrent use.
type Rotations struct {
	mu sync.Mutex
	m  map[SVIDSource]*rotationWatch
}

type rotationWatch struct {
	refs int
	stop chan struct{}
	done chan struct{}
}

// rotationPoll is how often a source without a Changed channel is polled.
const rotationPoll = 10 * time.Second

// Watch calls rec.SVIDRotated whenever src's SVID changes, until every
// caller for src has called its release. Sources with a
// Changed() <-chan struct{} (closed at the next update: DevSource,
// FileSource) are followed exactly; others are polled every 10s. release
// stops the watch's goroutine, and waits for it, with the last reference.
func (r *Rotations) Watch(src SVIDSource, rec *Recorder) (release func()) {
	if src == nil || rec == nil || !reflect.TypeOf(src).Comparable() {
		return func() {}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[SVIDSource]*rotationWatch{}
	}
	w := r.m[src]
	if w == nil {
		w = &rotationWatch{stop: make(chan struct{}), done: make(chan struct{})}
		r.m[src] = w
		go w.run(src, rec)
	}
	w.refs++
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			if w.refs--; w.refs == 0 {
				delete(r.m, src)
				close(w.stop)
				<-w.done
			}
		})
	}
}

// Len returns the number of sources watched.
func (r *Rotations) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}

func (w *rotationWatch) run(src SVIDSource, rec *Recorder) {
	defer close(w.done)
	changer, _ := src.(interface{ Changed() <-chan struct{} })
	serial := func() string {
		svid, err := src.GetX509SVID()
		if err != nil || len(svid.Certificates) == 0 {
			return ""
		}
		return svid.Certificates[0].SerialNumber.String()
	}
	last := serial()
	for {
		// Subscribe before comparing, so an update in between is not lost.
		var changed <-chan struct{}
		var timer *time.Timer
		var tick <-chan time.Time
		if changer != nil {
			changed = changer.Changed()
		} else {
			timer = time.NewTimer(rotationPoll)
			tick = timer.C
		}
		if now := serial(); now != "" && now != last {
			last = now
			if svid, err := src.GetX509SVID(); err == nil && len(svid.Certificates) > 0 {
				rec.SVIDRotated(svid.ID.String(), svid.Certificates[0].NotAfter)
			}
		}
		select {
		case <-w.stop:
			if timer != nil {
				timer.Stop()
			}
			return
		case <-changed:
		case <-tick:
		}
	}
}
