// Command meshd is gridmesh's control plane.
//
//	meshd dev     serve the SPIFFE Workload API from a development CA
//	meshd serve   serve xDS to proxyless gRPC clients and servers
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: meshd <command> [flags]

commands:
  dev     serve the SPIFFE Workload API from an in-process development CA
  serve   serve xDS to proxyless gRPC from a config file, registrations and Consul

Run 'meshd <command> -h' for the flags of a command.`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "meshd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "dev":
		return runDev(ctx, args[1:])
	case "serve":
		return runServe(ctx, args[1:])
	case "-h", "-help", "--help", "help":
		fmt.Println(usage)
		return nil
	default:
		return fmt.Errorf("unknown command %q\n%s", args[0], usage)
	}
}
