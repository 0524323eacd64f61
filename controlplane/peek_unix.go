//go:build unix

package controlplane

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
)

// peekSocket returns up to n bytes from the front of c's receive queue
// without consuming them (recv with MSG_PEEK), waiting, within c's read
// deadline, until there are n or the bytes so far already differ from the
// HTTP/2 preface. ok is false when c is not a bare TCP or Unix socket (a
// TLS conn, say, whose socket holds ciphertext); the caller then reads.
func peekSocket(c net.Conn, n int) (head []byte, ok bool, err error) {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return nil, false, nil
	}
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return nil, false, nil
	}
	buf := make([]byte, n)
	got := 0
	var rerr error
	err = raw.Read(func(fd uintptr) bool {
		for {
			m, _, e := syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK)
			switch {
			case errors.Is(e, syscall.EINTR):
				continue
			case errors.Is(e, syscall.EAGAIN):
				return false // wait until readable
			case e != nil:
				rerr = e
				return true
			case m == 0:
				rerr = io.EOF
				return true
			}
			got = m
			// Fewer than n bytes that could still be the preface: the
			// poller wakes again when more arrive (the queue is not
			// drained, so only new data makes the socket readable).
			return m == n || !bytes.HasPrefix(h2Preface, buf[:m])
		}
	})
	if err == nil {
		err = rerr
	}
	return buf[:got], true, err
}
