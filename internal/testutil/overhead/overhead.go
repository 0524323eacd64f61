// Package overhead measures in a benchmark what one way of making a call
// adds over another, in the same run, so that the figure is a difference
// rather than two numbers from runs on a machine that changed in between:
//
//	func BenchmarkPolicyAdds(b *testing.B) {
//		overhead.Report(b, callWithout, callWith)
//	}
package overhead

import (
	"testing"
	"time"
)

// allocRuns is how many calls testing.AllocsPerRun averages over.
const allocRuns = 500

// Report runs with in b's loop (so ns/op and allocs/op are with's) and
// reports what it adds over bare: added-allocs/op from testing.AllocsPerRun
// on each, added-ns/op from timing both in alternating blocks of as many
// calls as the loop made, so that drift on a busy machine hits them alike.
// Both are called once first, so that connections are up. It blocks until
// done; bare and with run on b's goroutine only.
func Report(b *testing.B, bare, with func()) {
	b.Helper()
	bare()
	with()
	b.ReportAllocs()
	for b.Loop() {
		with()
	}
	const blocks = 4
	per := max(b.N/blocks, 1)
	var tBare, tWith time.Duration
	for range blocks {
		for _, x := range []struct {
			fn  func()
			sum *time.Duration
		}{{bare, &tBare}, {with, &tWith}} {
			start := time.Now()
			for range per {
				x.fn()
			}
			*x.sum += time.Since(start)
		}
	}
	b.ReportMetric(testing.AllocsPerRun(allocRuns, with)-testing.AllocsPerRun(allocRuns, bare), "added-allocs/op")
	b.ReportMetric(float64((tWith-tBare).Nanoseconds())/float64(blocks*per), "added-ns/op")
}
