package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"time"
)

// WatchConfigFile reloads the config at path whenever its content changes,
// checking every interval (default 1s when zero). A bad edit is refused,
// logged and counted, and the last good config stays in force; fixing the
// file applies it. WatchConfigFile blocks until ctx ends and returns
// ctx.Err(). It does not load the file at start; call LoadConfigFile first.
//
// It polls the content rather than using inotify so that atomic renames
// (editors, Kubernetes ConfigMap symlink swaps) and network file systems
// all work the same way.
func (s *Server) WatchConfigFile(ctx context.Context, path string, interval time.Duration) error {
	if interval <= 0 {
		interval = time.Second
	}
	last := fileSum(path)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		sum := fileSum(path)
		if sum == nil || bytes.Equal(sum, last) {
			continue // unreadable (mid-rename) or unchanged
		}
		last = sum
		s.log.Info("config file changed", "path", path)
		_ = s.LoadConfigFile(path) // refusal is logged and counted there
	}
}

func fileSum(path string) []byte {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	h := sha256.Sum256(data)
	return h[:]
}
