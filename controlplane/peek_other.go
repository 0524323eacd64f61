//go:build !unix

package controlplane

import "net"

// peekSocket is not available here: the splitter reads the opening bytes
// and wraps the connection to replay them.
func peekSocket(net.Conn, int) ([]byte, bool, error) { return nil, false, nil }
