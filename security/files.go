package security

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// FileConfig names the PEM files of a FileSource.
type FileConfig struct {
	// CertFile holds the SVID leaf certificate, then any intermediates.
	CertFile string
	// KeyFile holds the SVID's private key (PKCS#8, EC or RSA).
	KeyFile string
	// BundleFile holds the CA certificates of the SVID's trust domain.
	BundleFile string
	// OnReloadError is called when changed files cannot be loaded; the
	// source keeps serving the last good SVID and bundle. Optional.
	OnReloadError func(error)
}

// FileSource is a Source read from PEM files on disk, reloaded whenever any
// of them changes (including atomic renames and Kubernetes secret symlink
// swaps). A bad reload keeps the last good SVID and bundle. Safe for
// concurrent use; Close stops the file watcher.
type FileSource struct {
	staticState
	cfg     FileConfig
	watcher *fsnotify.Watcher
	done    chan struct{}
	once    sync.Once
}

// NewFileSource loads the files and starts watching them. It blocks until
// the files hold a valid SVID and bundle, polling while they are missing or
// invalid, and fails at ctx's deadline (30 seconds if none) with the
// last load error.
func NewFileSource(ctx context.Context, cfg FileConfig) (*FileSource, error) {
	for name, v := range map[string]string{"CertFile": cfg.CertFile, "KeyFile": cfg.KeyFile, "BundleFile": cfg.BundleFile} {
		if v == "" {
			return nil, fmt.Errorf("security: FileConfig.%s is empty: give the path of a PEM file", name)
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultIdentityWait)
		defer cancel()
	}
	s := &FileSource{cfg: cfg, done: make(chan struct{})}
	for {
		err := s.load()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("security: no valid SVID in %s, %s, %s before the deadline: %w", cfg.CertFile, cfg.KeyFile, cfg.BundleFile, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("security: watching identity files: %w", err)
	}
	dirs := map[string]bool{}
	for _, f := range []string{cfg.CertFile, cfg.KeyFile, cfg.BundleFile} {
		dirs[filepath.Dir(f)] = true
	}
	for d := range dirs {
		if err := w.Add(d); err != nil {
			w.Close()
			return nil, fmt.Errorf("security: watching %s: %w", d, err)
		}
	}
	s.watcher = w
	go s.watch()
	return s, nil
}

func (s *FileSource) load() error {
	svid, err := x509svid.Load(s.cfg.CertFile, s.cfg.KeyFile)
	if err != nil {
		return err
	}
	bundle, err := x509bundle.Load(svid.ID.TrustDomain(), s.cfg.BundleFile)
	if err != nil {
		return err
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		return fmt.Errorf("SVID in %s does not verify against %s: %w", s.cfg.CertFile, s.cfg.BundleFile, err)
	}
	s.set(svid, x509bundle.NewSet(bundle))
	return nil
}

func (s *FileSource) watch() {
	defer close(s.done)
	// Writers replace several files one after another; wait for the burst
	// to settle before reloading so a half-written pair is not read.
	const settle = 50 * time.Millisecond
	var timer *time.Timer
	var fire <-chan time.Time
	for {
		select {
		case ev, ok := <-s.watcher.Events:
			if !ok {
				return
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			if timer == nil {
				timer = time.NewTimer(settle)
			} else {
				timer.Reset(settle)
			}
			fire = timer.C
		case err, ok := <-s.watcher.Errors:
			if !ok {
				return
			}
			s.reportError(err)
		case <-fire:
			fire = nil
			if err := s.load(); err != nil {
				s.reportError(err)
			}
		}
	}
}

func (s *FileSource) reportError(err error) {
	if s.cfg.OnReloadError != nil {
		s.cfg.OnReloadError(fmt.Errorf("security: reloading identity files (keeping the last good SVID): %w", err))
	}
}

// Close stops watching the files; the last SVID and bundle stay
// readable. It is safe to call more than once.
func (s *FileSource) Close() error {
	var err error
	s.once.Do(func() {
		err = s.watcher.Close()
		<-s.done
	})
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}
