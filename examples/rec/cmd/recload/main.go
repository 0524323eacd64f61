// Command recload is a load generator for the REC gateway: orders from
// concurrent participants at a set rate, each with an Idempotency-Key and
// repeated with it until the gateway answers definitely. It shows a live
// progress line and ends with throughput, latency percentiles and errors by
// kind. The gateway serves mesh mTLS, so recload needs an SVID: it runs as
// the portal workload, from SPIFFE_ENDPOINT_SOCKET.
//
//	bin/recdemo -bin bin -hold &          # a seeded platform; it prints the next line
//	SPIFFE_ENDPOINT_SOCKET=unix:///tmp/recdemo-.../portal.sock \
//	  bin/recload -url https://127.0.0.1:PORT -rate 200 -duration 30s -concurrency 16
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gridmesh/gridmesh/examples/rec/load"
	"github.com/gridmesh/gridmesh/examples/rec/platform"
	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/examples/rec/recmesh"
	"github.com/gridmesh/gridmesh/mesh"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "recload:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	url := flag.String("url", "https://127.0.0.1:8443", "the gateway's base URL")
	rate := flag.Float64("rate", 100, "orders started per second, over all workers (0: as fast as they go)")
	duration := flag.Duration("duration", 10*time.Second, "how long to send (0: until -orders or interrupted)")
	orders := flag.Int("orders", 0, "stop after this many orders (0: no limit)")
	concurrency := flag.Int("concurrency", 8, "concurrent participants")
	participants := flag.Int("participants", 20, "trade as p01..pNN (the demo seeds 20)")
	cancelShare := flag.Float64("cancel", 0.05, "share of open orders cancelled right after")
	mid := flag.Int64("mid", 1500, "price in cents per MWh that orders scatter ±15% around")
	retryFor := flag.Duration("retry-for", time.Minute, "how long one order is repeated before it counts as unknown")
	socket := flag.String("socket", "", "SPIFFE Workload API address (default: SPIFFE_ENDPOINT_SOCKET)")
	flag.Parse()
	if *duration == 0 && *orders == 0 {
		fmt.Fprintln(os.Stderr, "recload: no -duration and no -orders: running until interrupted")
	}

	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	node, err := recmesh.Start(sctx, recmesh.Config{Name: policy.Portal, Socket: *socket, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return fmt.Errorf("%w (recload needs an SVID: set SPIFFE_ENDPOINT_SOCKET to the portal workload's socket)", err)
	}
	defer node.Close()
	client, err := node.HTTPClient(policy.Gateway)
	if err != nil {
		return err
	}
	defer client.Transport.(*mesh.HTTPTransport).Close()

	seed := platform.NewSeed(*participants, 0, 0)
	res, err := load.Run(ctx, load.Config{
		URL: *url, Client: client, Rate: *rate, Duration: *duration, Orders: *orders, Concurrency: *concurrency,
		Participants: seed.Participants, Markets: seed.Markets, CancelShare: *cancelShare, MidCents: *mid,
		RetryFor: *retryFor, Progress: os.Stderr,
	})
	if res != nil {
		fmt.Print(res.Summary())
	}
	if err != nil && ctx.Err() == nil {
		return err
	}
	if res != nil && (res.Invalid > 0 || res.Unknown > 0) {
		return fmt.Errorf("%d orders invalid, %d with unknown outcome", res.Invalid, res.Unknown)
	}
	return nil
}
