package main

import (
	"net"
	"testing"
)

func newListener() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

// freeAddr returns a loopback address no one listens on now. Each test
// gets its own admin endpoint this way: with the shared "127.0.0.1:0" a
// test could find the previous test's endpoint still held by a connection
// whose release runs after its Close returns.
func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := newListener()
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}
