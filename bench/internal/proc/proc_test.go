package proc_test

import (
	"os"
	"testing"
	"time"

	"github.com/gridmesh/gridmesh/bench/internal/proc"
)

func TestOwnProcess(t *testing.T) {
	pid := os.Getpid()
	// Burn a little CPU so utime moves past one clock tick.
	deadline := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	cpu, err := proc.CPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	if cpu <= 0 {
		t.Errorf("CPU = %v, want > 0 after a busy loop", cpu)
	}
	rss, err := proc.RSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	peak, err := proc.PeakRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	if rss <= 0 || peak < rss {
		t.Errorf("RSS %d, peak %d: want 0 < RSS <= peak", rss, peak)
	}
}

func TestMissingProcess(t *testing.T) {
	if _, err := proc.CPU(-1); err == nil {
		t.Error("CPU(-1) succeeded, want an error")
	}
	if _, err := proc.RSS(-1); err == nil {
		t.Error("RSS(-1) succeeded, want an error")
	}
}
