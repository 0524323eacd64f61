package controlplane

import (
	"bufio"
	"bytes"
	"net"
	"sync"
	"time"
)

// splitter divides one listener's connections between gRPC (they open with
// the HTTP/2 preface) and HTTP/1.1 (the registration API), so meshd needs
// one address: mesh servers register at the address they get xDS from.
type splitter struct {
	lis        net.Listener
	tr         *transport // with tr.tls set, every connection is TLS
	grpc, http *chanListener

	mu      sync.Mutex
	pending map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
}

func newSplitter(lis net.Listener, tr *transport) *splitter {
	sp := &splitter{lis: lis, tr: tr, pending: map[net.Conn]struct{}{}}
	sp.grpc = newChanListener(lis.Addr())
	sp.http = newChanListener(lis.Addr())
	return sp
}

var h2Preface = []byte("PRI * HTTP/2.0")

// run accepts until the listener fails or is closed, then closes both
// sides. It blocks.
func (sp *splitter) run() {
	defer sp.close()
	for {
		c, err := sp.lis.Accept()
		if err != nil {
			return
		}
		sp.mu.Lock()
		if sp.closed {
			sp.mu.Unlock()
			c.Close()
			return
		}
		sp.pending[c] = struct{}{}
		sp.wg.Add(1)
		sp.mu.Unlock()
		go sp.sniff(c)
	}
}

func (sp *splitter) sniff(c net.Conn) {
	defer sp.wg.Done()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var (
		conn net.Conn
		h2   bool
		err  error
	)
	if sp.tr.tls != nil {
		// Under mTLS the client's ALPN choice tells gRPC (h2) from the
		// HTTP/1.1 API; the deadline bounds the handshake too.
		var ac *authedConn
		if ac, h2, err = sp.tr.handshake(c); err == nil {
			conn = ac
		}
	} else {
		conn, h2, err = sniffH2(c)
	}
	sp.mu.Lock()
	delete(sp.pending, c)
	closed := sp.closed
	sp.mu.Unlock()
	if err != nil {
		c.Close()
		return
	}
	if closed {
		conn.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	to := sp.http
	if h2 {
		to = sp.grpc
	}
	if !to.deliver(conn) {
		conn.Close()
	}
}

// sniffH2 reports whether c opens with the HTTP/2 preface and returns the
// connection to hand on. Where the socket allows it (TCP and Unix sockets
// on Unix) it looks without consuming (peekSocket) and returns c itself:
// grpc-go (1.85) reads a bare socket conn only when data is ready, into a
// pooled buffer, so an idle connection holds none, while any other
// net.Conn gets a bufio.Reader of ReadBufferSize pinned for its life
// (4 KB a client). Elsewhere it reads the opening bytes and returns c
// wrapped to replay them. err is set only when nothing at all was read.
func sniffH2(c net.Conn) (net.Conn, bool, error) {
	if head, ok, err := peekSocket(c, len(h2Preface)); ok {
		if err != nil && len(head) == 0 {
			return nil, false, err
		}
		return c, bytes.Equal(head, h2Preface), nil
	}
	r := bufio.NewReaderSize(c, 64)
	head, err := r.Peek(len(h2Preface))
	if err != nil && len(head) == 0 {
		return nil, false, err
	}
	return &peekedConn{Conn: c, r: r}, bytes.Equal(head, h2Preface), nil
}

// close stops accepting, drops connections still being sniffed and closes
// both sides. Safe to call twice.
func (sp *splitter) close() {
	sp.mu.Lock()
	if sp.closed {
		sp.mu.Unlock()
		return
	}
	sp.closed = true
	for c := range sp.pending {
		c.Close()
	}
	sp.mu.Unlock()
	sp.lis.Close()
	sp.wg.Wait()
	sp.grpc.Close()
	sp.http.Close()
}

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// chanListener is a net.Listener fed by the splitter.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
