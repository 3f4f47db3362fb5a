package node

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// The key sockets serve derived keys (never K, rule K3) to local programs
// other than the daemon's own user, beside the control socket, which stays
// 0600 (rule S5): the LUKS key-file socket for systemd-cryptsetup (luks.go)
// and the application key socket (appsock.go). Whoever may connect to
// them, each connection is judged by the credentials the kernel recorded
// for its peer (SO_PEERCRED), not by the socket file's mode alone.

// peerCred is who is at the other end of a unix connection, as the kernel
// recorded it when the peer connected.
type peerCred struct {
	PID    int
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups, when the kernel tells them
	known  bool
}

// inGroup reports whether gid is the peer's primary or a supplementary
// group.
func (c peerCred) inGroup(gid uint32) bool {
	return c.known && (c.GID == gid || slices.Contains(c.Groups, gid))
}

// SocketServer is one of the node's key sockets. It stops when the node
// closes, or earlier with Close.
type SocketServer struct {
	what string
	path string
	ln   *net.UnixListener
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
	once sync.Once
	// onClose runs once, after the listener is closed.
	onClose func()
}

// Path is the socket's path.
func (s *SocketServer) Path() string { return s.path }

// Close stops accepting, cancels requests still waiting for the node to
// unlock, waits for them, and removes the socket file.
func (s *SocketServer) Close() error {
	s.once.Do(func() {
		s.stop()
		s.ln.Close()
		if s.onClose != nil {
			s.onClose()
		}
		s.wg.Wait()
		os.Remove(s.path)
		log.Infow(s.what+" closed", "socket", s.path)
	})
	return nil
}

// listenKeySocket creates a key socket at path with mode and, when gid is
// not negative, group gid, and ties it to the node's lifetime. The parent
// directory is created (0755) if missing; a stale socket left by a crashed
// daemon is replaced, a live one is not.
func (n *Node) listenKeySocket(what, path string, mode fs.FileMode, gid int) (*SocketServer, error) {
	if path == "" {
		return nil, fmt.Errorf("%s: no path", what)
	}
	if len(path) > 100 {
		return nil, fmt.Errorf("%s: path %q is too long for a unix socket", what, path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := removeStaleSocket(abs); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	ln, err := listenUnix(what, abs, mode, gid, nil)
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(n.ctx)
	s := &SocketServer{what: what, path: abs, ln: ln, ctx: ctx, stop: stop}
	go func() {
		<-ctx.Done()
		s.Close()
	}()
	return s, nil
}
