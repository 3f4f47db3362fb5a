package consensus

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// RaftProtocol carries Raft RPCs. Its version changes whenever the framing
// does (rule S6). It is deliberately not go-libp2p-raft's "/raft/1.0.0/rpc",
// so a p2pkey node never talks Raft with an unrelated application.
const RaftProtocol protocol.ID = "/p2pkey/raft/1.0.0"

// raftServiceName names the resource-manager scope of Raft streams.
const raftServiceName = "p2pkey.raft"

// defaultMaxPool is how many idle streams the transport keeps per peer. Every
// RPC on a fresh stream costs a yamux stream, a protocol negotiation and a
// handler goroutine (and, under hashicorp/raft's NetworkTransport, a 256 KiB
// buffer at each end); pooling makes an idle cluster's heartbeats nearly
// free. go-libp2p-raft uses 0. One is not enough: a leader's
// heartbeats and its replication RPCs to a follower overlap whenever
// entries flow (every CommitTimeout in tests), and each overlap then opened
// and dropped a stream with its buffers (TestJoinFlood timed out removing a
// member from the configuration).
const defaultMaxPool = 3

// gate decides whether a remote peer may open a Raft stream (rule S1).
type gate func(peer.ID) bool

// streamLayer implements raft.StreamLayer over libp2p streams. Unlike
// go-libp2p-raft's, it refuses streams from peers the gate does not admit
// before Raft reads a byte, checks every RPC on an admitted stream against the
// stream's authenticated peer before Raft reads it (rpcGuard), and dials over
// limited (relayed) connections.
type streamLayer struct {
	host  host.Host
	allow gate
	// check, if set, is asked about every RPC on an accepted stream.
	check rpcCheck
	// onRefused, if set, is told of a refused stream (in == nil) or RPC.
	onRefused func(p peer.ID, in *rpcInfo)
	streams   chan network.Stream
	ctx       context.Context
	cancel    context.CancelFunc

	log        *zap.SugaredLogger
	refusedLog *rate.Limiter
	mu         sync.Mutex
	refused    uint64
	refusedRPC uint64
	accepted   map[*streamConn]struct{}
	// live counts accepted streams Raft has not closed yet: each has a
	// handler goroutine in Raft's transport that may still be running.
	live atomic.Int64
}

func newStreamLayer(h host.Host, allow gate, check rpcCheck) *streamLayer {
	ctx, cancel := context.WithCancel(context.Background())
	sl := &streamLayer{
		host:       h,
		allow:      allow,
		check:      check,
		streams:    make(chan network.Stream),
		ctx:        ctx,
		cancel:     cancel,
		log:        &log.SugaredLogger,
		refusedLog: rate.NewLimiter(rate.Every(time.Second), 5),
		accepted:   map[*streamConn]struct{}{},
	}
	h.SetStreamHandler(RaftProtocol, sl.handle)
	return sl
}

func (sl *streamLayer) handle(s network.Stream) {
	remote := s.Conn().RemotePeer()
	if !sl.allow(remote) {
		sl.mu.Lock()
		sl.refused++
		n := sl.refused
		sl.mu.Unlock()
		if sl.refusedLog.Allow() {
			sl.log.Warnw("refused Raft stream from a peer outside the Raft configuration", "peer", remote, "addr", s.Conn().RemoteMultiaddr(), "refused_total", n)
		}
		s.Reset()
		if sl.onRefused != nil {
			sl.onRefused(remote, nil)
		}
		return
	}
	if err := s.Scope().SetService(raftServiceName); err != nil {
		sl.log.Debugw("raft stream: resource scope", "peer", remote, "err", err)
		s.Reset()
		return
	}
	select {
	case sl.streams <- s:
	case <-sl.ctx.Done():
		s.Reset()
	}
}

// Refused reports how many Raft streams the gate has refused.
func (sl *streamLayer) Refused() uint64 {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return sl.refused
}

// RefusedRPCs reports how many RPCs the guard has refused on admitted streams.
func (sl *streamLayer) RefusedRPCs() uint64 {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return sl.refusedRPC
}

// refuseRPC counts and logs an RPC the guard refused, and resets its stream.
func (sl *streamLayer) refuseRPC(c *streamConn, in *rpcInfo, err error) {
	sl.mu.Lock()
	sl.refusedRPC++
	n := sl.refusedRPC
	sl.mu.Unlock()
	if sl.refusedLog.Allow() {
		sl.log.Warnw("refused Raft RPC", "peer", c.Conn().RemotePeer(), "rpc", in.kind(),
			"header_id", string(in.header.ID), "header_addr", string(in.header.Addr), "named", string(in.named),
			"reason", err, "refused_rpcs_total", n)
	}
	c.Stream.Reset()
	c.forget()
	if sl.onRefused != nil {
		sl.onRefused(c.Conn().RemotePeer(), in)
	}
}

// Dial opens a Raft stream to the peer whose ID is address.
func (sl *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	pid, err := peer.Decode(string(address))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(sl.ctx, timeout)
	defer cancel()
	ctx = network.WithAllowLimitedConn(ctx, "p2pkey-raft")
	s, err := sl.host.NewStream(ctx, pid, RaftProtocol)
	if err != nil {
		return nil, err
	}
	if err := s.Scope().SetService(raftServiceName); err != nil {
		s.Reset()
		return nil, err
	}
	return &streamConn{Stream: s}, nil
}

// Accept waits for the next admitted Raft stream.
func (sl *streamLayer) Accept() (net.Conn, error) {
	select {
	case s := <-sl.streams:
		c := &streamConn{Stream: s, layer: sl}
		if sl.check != nil {
			c.guard = newRPCGuard(s, s.Conn().RemotePeer(), sl.check, func(in *rpcInfo, err error) { sl.refuseRPC(c, in, err) })
		}
		sl.mu.Lock()
		sl.accepted[c] = struct{}{}
		sl.mu.Unlock()
		sl.live.Add(1)
		return c, nil
	case <-sl.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops accepting streams.
func (sl *streamLayer) Close() error {
	sl.host.RemoveStreamHandler(RaftProtocol)
	sl.cancel()
	return nil
}

// Addr returns the local peer ID as a net.Addr.
func (sl *streamLayer) Addr() net.Addr { return peerAddr(sl.host.ID()) }

// resetPeer resets every accepted Raft stream from p, so that a gate change
// takes effect on pooled streams too.
func (sl *streamLayer) resetPeer(p peer.ID) int {
	return sl.resetWhere(func(q peer.ID) bool { return q == p })
}

// resetWhere resets every accepted Raft stream whose peer drop names.
func (sl *streamLayer) resetWhere(drop func(peer.ID) bool) int {
	sl.mu.Lock()
	var victims []*streamConn
	for c := range sl.accepted {
		if drop(c.Conn().RemotePeer()) {
			victims = append(victims, c)
		}
	}
	sl.mu.Unlock()
	for _, c := range victims {
		c.Stream.Reset()
		c.forget()
	}
	return len(victims)
}

// streamConn makes a libp2p stream a net.Conn.
type streamConn struct {
	network.Stream
	layer  *streamLayer // set on accepted streams
	guard  *rpcGuard    // set on accepted streams when the layer checks RPCs
	closed atomic.Bool  // Raft has closed it (its handler returned)
}

// Read reads through the guard on accepted streams, so Raft reads only RPCs
// the guard has checked.
func (c *streamConn) Read(p []byte) (int, error) {
	if c.guard != nil {
		return c.guard.Read(p)
	}
	return c.Stream.Read(p)
}

// drain resets every accepted stream and waits, at most timeout, until Raft
// has closed each of them: a handler that was running an RPC when Raft shut
// down (a heartbeat writes the current term) has then returned, and the
// stores can close under nobody.
func (sl *streamLayer) drain(timeout time.Duration) bool {
	sl.resetWhere(func(peer.ID) bool { return true })
	deadline := time.Now().Add(timeout)
	for {
		if sl.live.Load() <= 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond) // shutdown only: Raft gives no signal when a handler returns
	}
}

func (c *streamConn) forget() {
	if c.layer != nil {
		c.layer.mu.Lock()
		delete(c.layer.accepted, c)
		c.layer.mu.Unlock()
	}
}

func (c *streamConn) LocalAddr() net.Addr  { return peerAddr(c.Conn().LocalPeer()) }
func (c *streamConn) RemoteAddr() net.Addr { return peerAddr(c.Conn().RemotePeer()) }

// Close closes the stream; Raft closes pooled conns it no longer wants, and a
// reset is the honest signal for a conn that failed mid-RPC, which Raft also
// closes. A full close would wait for the peer's half, so reset instead when
// a plain close fails.
func (c *streamConn) Close() error {
	c.forget()
	if c.layer != nil && c.closed.CompareAndSwap(false, true) {
		c.layer.live.Add(-1)
	}
	if err := c.Stream.Close(); err != nil {
		c.Stream.Reset()
		if errors.Is(err, network.ErrReset) {
			return nil
		}
		return err
	}
	return nil
}

type peerAddr peer.ID

func (a peerAddr) Network() string { return "libp2p" }
func (a peerAddr) String() string  { return peer.ID(a).String() }
