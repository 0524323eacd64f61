package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"time"
)

// WatchConfigFile reloads the config at path whenever its content changes,
// checking every interval (default 1s when zero). A changed file is read
// once it has stayed the same for one interval, so a writer that rewrites
// the file in place is not read half-way through (unless it stalls for
// longer than an interval). A bad file (empty, cut off, over MaxConfigSize,
// invalid: see ParseConfig) is refused, logged with its problems and
// counted in Stats.Rejections, and the last good config stays in force;
// fixing the file applies it. A file that cannot be read (mid-rename,
// removed) is skipped until it can. WatchConfigFile blocks until ctx ends
// and returns ctx.Err(). Call LoadConfigFile first: the watcher applies
// the file at its first check too (a file unchanged since LoadConfigFile
// leaves the snapshot as it is), so a change made between the two calls
// is not missed. Safe to run beside the Server's other methods.
//
// It polls the content rather than using inotify so that atomic renames
// (editors, Kubernetes ConfigMap symlink swaps) and network file systems
// all work the same way.
func (s *Server) WatchConfigFile(ctx context.Context, path string, interval time.Duration) error {
	if interval <= 0 {
		interval = time.Second
	}
	var last []byte    // the content last applied or refused; nil: none yet
	var pending []byte // a new content seen once, waiting to settle
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		sum, data, err := readSum(path)
		switch {
		case sum == nil:
			continue // unreadable (mid-rename, removed)
		case bytes.Equal(sum, last):
			pending = nil
			continue
		case !bytes.Equal(sum, pending):
			pending = sum // changed: read it when it has stopped changing
			continue
		}
		if last != nil {
			s.log.Info("config file changed", "path", path)
		}
		last, pending = sum, nil
		if err == nil {
			var cfg *Config
			if cfg, err = ParseConfig(path, data); err == nil {
				_ = s.SetConfig(path, cfg) // refusal is logged and counted there
				continue
			}
		}
		s.reject(err)
	}
}

// readSum reads the config at path (up to MaxConfigSize and one byte) and
// returns the hash of what it read, the data, and readConfigFile's error
// for a file over the limit. The sum is nil when the file cannot be read.
func readSum(path string) (sum, data []byte, err error) {
	data, err = readConfigFile(path)
	var ce *ConfigError
	if err != nil && !errors.As(err, &ce) {
		return nil, nil, err
	}
	h := sha256.Sum256(data)
	return h[:], data, err
}
