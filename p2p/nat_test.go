package p2p

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/p2pkey/p2pkey/internal/testkit"
)

// newTestHost starts a host from New listening on loopback TCP only.
func newTestHost(t *testing.T, opts ...Option) host.Host {
	t.Helper()
	return newTestHostKey(t, newKey(t), opts...)
}

func newKey(t *testing.T) crypto.PrivKey {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func idOf(t *testing.T, priv crypto.PrivKey) peer.ID {
	t.Helper()
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newTestHostKey(t *testing.T, priv crypto.PrivKey, opts ...Option) host.Host {
	t.Helper()
	opts = append([]Option{WithListenAddrs("/ip4/127.0.0.1/tcp/0")}, opts...)
	h, err := New(priv, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// eventually polls cond every 20ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, what, timeout, cond)
}

func addrInfo(h host.Host) peer.AddrInfo { return peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()} }

// memberSet is a concurrency-safe membership check for the relay service.
type memberSet struct {
	mu sync.Mutex
	m  map[peer.ID]bool
}

func (s *memberSet) add(ids ...peer.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[peer.ID]bool{}
	}
	for _, id := range ids {
		s.m[id] = true
	}
}

func (s *memberSet) has(id peer.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id]
}

// blockDirect is a connection gater that refuses direct (non-circuit) dials
// to one peer until opened, so two hosts on loopback behave like two hosts
// behind NATs that cannot reach each other.
type blockDirect struct {
	peer atomic.Value // peer.ID
	open atomic.Bool
}

func (g *blockDirect) InterceptPeerDial(peer.ID) bool { return true }
func (g *blockDirect) InterceptAddrDial(p peer.ID, a ma.Multiaddr) bool {
	blocked, _ := g.peer.Load().(peer.ID)
	return g.open.Load() || p != blocked || isCircuitAddr(a)
}
func (g *blockDirect) InterceptAccept(network.ConnMultiaddrs) bool { return true }
func (g *blockDirect) InterceptSecured(network.Direction, peer.ID, network.ConnMultiaddrs) bool {
	return true
}
func (g *blockDirect) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}

const echoProto = protocol.ID("/p2pkey/test/echo/1")

func serveEcho(h host.Host) {
	h.SetStreamHandler(echoProto, func(s network.Stream) {
		defer s.Close()
		s.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(io.LimitReader(s, 1024)).ReadString('\n')
		if err != nil {
			s.Reset()
			return
		}
		io.WriteString(s, line)
	})
}

// echo opens a stream to p, sends one line and checks it comes back. It
// returns the connection the stream used.
func echo(ctx context.Context, h host.Host, p peer.ID, msg string) (network.Conn, error) {
	s, err := h.NewStream(ctx, p, echoProto)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(s, msg+"\n"); err != nil {
		s.Reset()
		return nil, err
	}
	got, err := bufio.NewReader(s).ReadString('\n')
	if err != nil {
		s.Reset()
		return nil, err
	}
	if got != msg+"\n" {
		return nil, fmt.Errorf("echo: got %q, want %q", got, msg)
	}
	return s.Conn(), nil
}

// relayCluster is a relay R that serves members A and B, which cannot dial
// each other directly until their gaters are opened.
type relayCluster struct {
	r, a, b host.Host
	ga, gb  *blockDirect
	members *memberSet
}

func newRelayCluster(t *testing.T, grace time.Duration) *relayCluster {
	t.Helper()
	c := &relayCluster{ga: &blockDirect{}, gb: &blockDirect{}, members: &memberSet{}}
	ka, kb := newKey(t), newKey(t)
	c.ga.peer.Store(idOf(t, kb))
	c.gb.peer.Store(idOf(t, ka))
	c.members.add(idOf(t, ka), idOf(t, kb))
	c.r = newTestHost(t, WithReachability(network.ReachabilityPublic), WithRelayService(c.members.has))
	relays := []peer.AddrInfo{addrInfo(c.r)}
	c.a = newTestHostKey(t, ka, WithStaticRelays(relays), WithRelayUpgradeGrace(grace), WithLibp2pOptions(libp2p.ConnectionGater(c.ga)))
	c.b = newTestHostKey(t, kb, WithStaticRelays(relays), WithRelayUpgradeGrace(grace), WithLibp2pOptions(libp2p.ConnectionGater(c.gb)))
	for _, h := range []host.Host{c.a, c.b} {
		serveEcho(h)
		serveBulk(h)
	}
	return c
}

// dialViaRelay connects b to a through R, polling until a holds its
// reservation on R (AutoRelay makes it in the background).
func (c *relayCluster) dialViaRelay(t *testing.T) {
	t.Helper()
	circuit := CircuitAddrs([]peer.AddrInfo{addrInfo(c.r)}, c.a.ID())
	eventually(t, 30*time.Second, "a relayed connection from b to a", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return c.b.Connect(ctx, peer.AddrInfo{ID: c.a.ID(), Addrs: circuit}) == nil
	})
}

func TestRelayedStreamsThenDirect(t *testing.T) {
	c := newRelayCluster(t, 50*time.Millisecond)
	if got := Reachability(c.r); got != ReachPublic {
		t.Fatalf("relay reachability = %q, want public", got)
	}
	c.dialViaRelay(t)
	if got := ConnType(c.b, c.a.ID()); got != ConnRelayed {
		t.Fatalf("b→a connection type = %q, want relayed", got)
	}
	if n := CountConns(c.b); n.Relayed < 1 || n.HolePunched != 0 {
		t.Fatalf("b's connection counts: %+v, want one relayed at least", n)
	}
	if got := ConnType(c.a, c.b.ID()); got != ConnRelayed {
		t.Fatalf("a→b connection type = %q, want relayed", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// What the node's protocols do: allow a limited connection.
	conn, err := echo(network.WithAllowLimitedConn(ctx, "test"), c.b, c.a.ID(), "limited ok")
	if err != nil {
		t.Fatalf("stream with WithAllowLimitedConn over the relay: %v", err)
	}
	if !isRelayedConn(conn) {
		t.Fatalf("stream used %s, want a relayed connection", conn.RemoteMultiaddr())
	}
	// Members' circuits carry no limit, so a stream that does not ask
	// (gossipsub's) works too, in both directions.
	if conn.Stat().Limited {
		t.Fatal("a members' relayed connection is marked limited")
	}
	if _, err := echo(ctx, c.a, c.b.ID(), "plain ok"); err != nil {
		t.Fatalf("plain stream a→b over the relay: %v", err)
	}
	// More than go-libp2p's default 128 KiB per circuit.
	if err := bulk(ctx, c.b, c.a.ID(), 1<<20); err != nil {
		t.Fatalf("1 MiB over the relay: %v", err)
	}

	// A direct path appears (as after a hole punch): new streams take it,
	// and the relayed connection is closed after the grace period.
	c.ga.open.Store(true)
	c.gb.open.Store(true)
	dctx := network.WithForceDirectDial(ctx, "test")
	if _, err := c.b.Network().DialPeer(dctx, c.a.ID()); err != nil {
		t.Fatalf("direct dial: %v", err)
	}
	conn, err = echo(ctx, c.b, c.a.ID(), "direct ok")
	if err != nil {
		t.Fatalf("stream after the direct dial: %v", err)
	}
	if isRelayedConn(conn) {
		t.Fatalf("new stream used the relay (%s) although a direct connection exists", conn.RemoteMultiaddr())
	}
	eventually(t, 10*time.Second, "relayed connections to close", func() bool {
		for _, h := range []host.Host{c.a, c.b} {
			for _, cn := range h.Network().Conns() {
				if isRelayedConn(cn) {
					return false
				}
			}
		}
		return true
	})
	if got := ConnType(c.b, c.a.ID()); got != ConnDirect {
		t.Fatalf("b→a connection type = %q, want direct", got)
	}
}

const bulkProto = protocol.ID("/p2pkey/test/bulk/1")

// bulk sends n bytes from h to p and waits for the byte count back.
func bulk(ctx context.Context, h host.Host, p peer.ID, n int64) error {
	done := make(chan int64, 1)
	s, err := h.NewStream(ctx, p, bulkProto)
	if err != nil {
		return err
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(20 * time.Second))
	go func() {
		var buf [8]byte
		if _, err := io.ReadFull(s, buf[:]); err != nil {
			done <- -1
			return
		}
		var got int64
		for _, b := range buf {
			got = got<<8 | int64(b)
		}
		done <- got
	}()
	if _, err := io.CopyN(s, rand.Reader, n); err != nil {
		return err
	}
	if err := s.CloseWrite(); err != nil {
		return err
	}
	if got := <-done; got != n {
		return fmt.Errorf("peer received %d bytes, want %d", got, n)
	}
	return nil
}

func serveBulk(h host.Host) {
	h.SetStreamHandler(bulkProto, func(s network.Stream) {
		defer s.Close()
		s.SetDeadline(time.Now().Add(20 * time.Second))
		n, err := io.Copy(io.Discard, io.LimitReader(s, 8<<20))
		if err != nil {
			s.Reset()
			return
		}
		var buf [8]byte
		for i := 7; i >= 0; i-- {
			buf[i] = byte(n)
			n >>= 8
		}
		s.Write(buf[:])
	})
}

func TestRelayRefusesStrangers(t *testing.T) {
	c := newRelayCluster(t, -1)
	stranger := newTestHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := client.Reserve(ctx, stranger, addrInfo(c.r)); err == nil {
		t.Fatal("the relay gave a stranger a reservation")
	}
	// A member may reserve.
	if _, err := client.Reserve(ctx, c.a, addrInfo(c.r)); err != nil {
		t.Fatalf("member reservation: %v", err)
	}
	// A stranger may not open a circuit to a member...
	circuit := CircuitAddrs([]peer.AddrInfo{addrInfo(c.r)}, c.a.ID())
	if err := stranger.Connect(ctx, peer.AddrInfo{ID: c.a.ID(), Addrs: circuit}); err == nil {
		t.Fatal("a stranger opened a circuit to a member")
	}
	// ...and once removed, a member is a stranger too.
	c.members.mu.Lock()
	delete(c.members.m, c.b.ID())
	c.members.mu.Unlock()
	if err := c.b.Connect(ctx, peer.AddrInfo{ID: c.a.ID(), Addrs: circuit}); err == nil {
		t.Fatal("a removed member opened a circuit")
	}
}

func TestConnTypeHolePunched(t *testing.T) {
	a := newTestHost(t, WithRelayUpgradeGrace(-1))
	b := newTestHost(t, WithRelayUpgradeGrace(-1))
	tr := stateOf(a).punches
	if got := ConnType(a, b.ID()); got != ConnNone {
		t.Fatalf("before connecting: %q, want none", got)
	}
	// A direct connection that predates a punch stays "direct".
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Connect(ctx, addrInfo(b)); err != nil {
		t.Fatal(err)
	}
	if got := ConnType(a, b.ID()); got != ConnDirect {
		t.Fatalf("after a plain dial: %q, want direct", got)
	}
	for _, c := range a.Network().ConnsToPeer(b.ID()) {
		c.Close()
	}
	eventually(t, 5*time.Second, "disconnect", func() bool { return ConnType(a, b.ID()) == ConnNone })

	// The events DCUtR emits around a successful punch, with the
	// connection it makes in between.
	start := time.Now()
	tr.Trace(&holepunch.Event{Timestamp: start.UnixNano(), Peer: a.ID(), Remote: b.ID(), Type: holepunch.StartHolePunchEvtT,
		Evt: &holepunch.StartHolePunchEvt{RTT: time.Millisecond}})
	if err := a.Connect(ctx, addrInfo(b)); err != nil {
		t.Fatal(err)
	}
	end := time.Now()
	tr.Trace(&holepunch.Event{Timestamp: end.UnixNano(), Peer: a.ID(), Remote: b.ID(), Type: holepunch.EndHolePunchEvtT,
		Evt: &holepunch.EndHolePunchEvt{Success: true, EllapsedTime: end.Sub(start)}})
	if got := ConnType(a, b.ID()); got != ConnHolePunched {
		t.Fatalf("after a punch: %q, want hole-punched", got)
	}
	if n := CountConns(a); n.HolePunched != len(a.Network().ConnsToPeer(b.ID())) || n.HolePunched == 0 || n.Direct != 0 || n.Relayed != 0 {
		t.Fatalf("after a punch: counts %+v", n)
	}
	// A failed punch marks nothing; closing forgets the connection.
	for _, c := range a.Network().ConnsToPeer(b.ID()) {
		c.Close()
	}
	eventually(t, 5*time.Second, "disconnect", func() bool { return ConnType(a, b.ID()) == ConnNone })
	eventually(t, 5*time.Second, "the punched connection to be forgotten", func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return len(tr.conns) == 0
	})
	tr.Trace(&holepunch.Event{Timestamp: time.Now().UnixNano(), Remote: b.ID(), Type: holepunch.EndHolePunchEvtT,
		Evt: &holepunch.EndHolePunchEvt{Success: false, Error: "no"}})
	if err := a.Connect(ctx, addrInfo(b)); err != nil {
		t.Fatal(err)
	}
	if got := ConnType(a, b.ID()); got != ConnDirect {
		t.Fatalf("after a failed punch: %q, want direct", got)
	}
}

func TestReachability(t *testing.T) {
	pub := newTestHost(t, WithReachability(network.ReachabilityPublic))
	priv := newTestHost(t, WithReachability(network.ReachabilityPrivate))
	auto := newTestHost(t)
	eventually(t, 5*time.Second, "public", func() bool { return Reachability(pub) == ReachPublic })
	eventually(t, 5*time.Second, "private", func() bool { return Reachability(priv) == ReachPrivate })
	if got := Reachability(auto); got != ReachUnknown {
		t.Fatalf("a lone host on loopback: %q, want unknown", got)
	}
	if _, err := New(nil, WithReachability(network.Reachability(7))); err == nil {
		t.Fatal("an unknown reachability value was accepted")
	}
}

func TestAddrsChanged(t *testing.T) {
	changed := make(chan struct{}, 16)
	h := newTestHost(t, WithAddrsChanged(func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}))
	// Drain what startup produced, then add a listener.
	for len(changed) > 0 {
		<-changed
	}
	if err := h.Network().Listen(ma.StringCast("/ip4/127.0.0.1/tcp/0")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(20 * time.Second):
		t.Fatal("no address change reported after a new listener")
	}
}

func TestLibp2pOptions(t *testing.T) {
	priv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	build := func(opts ...Option) libp2p.Config {
		t.Helper()
		o := options{listen: []string{"/ip4/127.0.0.1/tcp/0"}, connLow: 1, connHigh: 2, holePunch: true}
		for _, opt := range opts {
			if err := opt(&o); err != nil {
				t.Fatal(err)
			}
		}
		lopts, err := o.libp2pOptions(priv, newPunchTracker())
		if err != nil {
			t.Fatal(err)
		}
		var cfg libp2p.Config
		if err := cfg.Apply(lopts...); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	cfg := build()
	switch {
	case !cfg.EnableAutoNATv2:
		t.Error("AutoNAT v2 is off by default")
	case !cfg.AutoNATConfig.EnableService:
		t.Error("the AutoNAT v1 service is off by default")
	case !cfg.EnableHolePunching:
		t.Error("hole punching is off by default")
	case cfg.NATManager != nil:
		t.Error("NAT port mapping is on by default")
	case cfg.EnableAutoRelay || cfg.EnableRelayService:
		t.Error("relay client or go-libp2p's relay service is on")
	case !cfg.Relay:
		t.Error("the relay transport is off")
	}
	relay := peer.AddrInfo{ID: newTestHost(t).ID(), Addrs: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/1")}}
	cfg = build(WithNATPortMap(true), WithStaticRelays([]peer.AddrInfo{relay}), WithRelayService(func(peer.ID) bool { return true }),
		WithAnnounceAddrs("/ip4/198.51.100.7/tcp/4001"))
	switch {
	case cfg.NATManager == nil:
		t.Error("WithNATPortMap(true) did not enable port mapping")
	case !cfg.EnableAutoRelay:
		t.Error("WithStaticRelays did not enable AutoRelay")
	case cfg.EnableRelayService:
		t.Error("go-libp2p's relay service is on: p2p runs its own")
	}
	// The announce list replaces direct addresses but keeps relay ones.
	circuit := ma.StringCast("/ip4/127.0.0.1/tcp/1/p2p/" + relay.ID.String() + "/p2p-circuit")
	got := cfg.AddrsFactory([]ma.Multiaddr{ma.StringCast("/ip4/10.0.0.2/tcp/4001"), circuit})
	if len(got) != 2 || got[0].String() != "/ip4/198.51.100.7/tcp/4001" || !got[1].Equal(circuit) {
		t.Errorf("announce factory = %v, want the announce address and the circuit address", got)
	}
	for _, bad := range []Option{WithStaticRelays([]peer.AddrInfo{{ID: relay.ID}}), WithRelayService(nil)} {
		o := options{}
		if err := bad(&o); err == nil {
			t.Error("an invalid relay option was accepted")
		}
	}
}

func TestParseRelaysAndCircuitAddrs(t *testing.T) {
	r := newTestHost(t)
	target := newTestHost(t)
	full := AddrInfoStrings(r)
	infos, err := ParseRelays(full)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 || infos[0].ID != r.ID() || len(infos[0].Addrs) != len(r.Addrs()) {
		t.Fatalf("ParseRelays(%v) = %v", full, infos)
	}
	if _, err := ParseRelays([]string{"/ip4/127.0.0.1/tcp/1"}); err == nil {
		t.Error("a relay address without /p2p/ was accepted")
	}
	if _, err := ParseRelays([]string{"nonsense"}); err == nil {
		t.Error("garbage was accepted")
	}
	got := CircuitAddrs(infos, target.ID())
	want := r.Addrs()[0].String() + "/p2p/" + r.ID().String() + "/p2p-circuit"
	if len(got) != len(r.Addrs()) || got[0].String() != want {
		t.Fatalf("CircuitAddrs = %v, want [%s]", got, want)
	}
	if got := CircuitAddrs(infos, r.ID()); len(got) != 0 {
		t.Fatalf("CircuitAddrs through the target itself = %v, want none", got)
	}
}

func TestCombineReachability(t *testing.T) {
	U, Pub, Priv := network.ReachabilityUnknown, network.ReachabilityPublic, network.ReachabilityPrivate
	for _, c := range []struct{ v1, v2, want network.Reachability }{
		{U, U, U}, {Pub, U, Pub}, {U, Pub, Pub}, {Priv, Pub, Pub}, {Pub, Priv, Pub},
		{Priv, U, Priv}, {U, Priv, Priv}, {Priv, Priv, Priv},
	} {
		if got := combineReachability(c.v1, c.v2); got != c.want {
			t.Errorf("combine(v1 %v, v2 %v) = %v, want %v", c.v1, c.v2, got, c.want)
		}
	}
}
