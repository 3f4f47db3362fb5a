package p2p

import (
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"golang.org/x/time/rate"
)

// fakeConn is the far end of a connection as a limiter sees it.
type fakeConn struct {
	network.Conn
	p    peer.ID
	addr ma.Multiaddr
}

func (c fakeConn) RemotePeer() peer.ID           { return c.p }
func (c fakeConn) RemoteMultiaddr() ma.Multiaddr { return c.addr }

func conn(t testing.TB, p peer.ID, addr string) fakeConn {
	t.Helper()
	return fakeConn{p: p, addr: ma.StringCast(addr)}
}

func fakePeer(i int) peer.ID { return peer.ID(fmt.Sprintf("peer-%d", i)) }

// Every peer spends a token and so leaves a bucket that is not full: the
// table must still stay within its cap.
func TestPeerLimiterTableIsBounded(t *testing.T) {
	l := NewPeerLimiter(rate.Every(time.Second), 3)
	now := time.Now()
	for i := range 100_000 {
		if !l.Allow(fakePeer(i), now) {
			t.Fatalf("peer %d refused its first event", i)
		}
	}
	if n := l.peers.lru.Len(); n > LimiterCap {
		t.Fatalf("table holds %d buckets, cap is %d", n, LimiterCap)
	}
	// The buckets still limit: the newest peer has 2 tokens left.
	p := fakePeer(99_999)
	allowed := 0
	for range 3 {
		if l.Allow(p, now) {
			allowed++
		}
	}
	if allowed != 2 {
		t.Fatalf("a recent peer got %d of 3 events, want 2: its bucket was lost or does not limit", allowed)
	}
}

func TestConnLimiterTablesAreBounded(t *testing.T) {
	l := NewConnLimiter(Bucket{Rate: rate.Every(time.Second), Burst: 3}, Bucket{Rate: 10, Burst: 20})
	now := time.Now()
	for i := range 100_000 {
		addr := fmt.Sprintf("/ip4/10.%d.%d.%d/tcp/4001", i>>16&0xff, i>>8&0xff, i&0xff)
		if !l.Allow(conn(t, fakePeer(i), addr), now) {
			t.Fatalf("peer %d on its own IP refused its first event", i)
		}
	}
	if n, m := l.peers.lru.Len(), l.ips.lru.Len(); n > LimiterCap || m > LimiterCap {
		t.Fatalf("tables hold %d peer and %d IP buckets, cap is %d", n, m, LimiterCap)
	}
}

// Peer IDs cost nothing: a flood from many of them on one IP is held by the
// IP's bucket, and the peers refused take no place in the peer table.
// Another IP is not starved.
func TestConnLimiterFloodFromOneIP(t *testing.T) {
	const ipBurst = 20
	l := NewConnLimiter(Bucket{Rate: rate.Every(2 * time.Second), Burst: 3}, Bucket{Rate: 1, Burst: ipBurst})
	now := time.Now()
	allowed := 0
	for i := range 10_000 {
		if l.Allow(conn(t, fakePeer(i), "/ip4/203.0.113.7/tcp/4001"), now) {
			allowed++
		}
	}
	if allowed != ipBurst {
		t.Fatalf("a flood of 10000 peer IDs from one IP got %d events through, want the IP burst %d", allowed, ipBurst)
	}
	if n := l.peers.lru.Len(); n > ipBurst {
		t.Fatalf("the refused flood took %d places in the peer table", n)
	}
	real := fakePeer(-1)
	if !l.Allow(conn(t, real, "/ip4/198.51.100.9/udp/4001/quic-v1"), now) {
		t.Fatal("a peer on another IP was starved by the flood")
	}
	// The flooded IP recovers at its rate.
	if !l.Allow(conn(t, fakePeer(-2), "/ip4/203.0.113.7/tcp/4001"), now.Add(time.Second)) {
		t.Fatal("the flooded IP never refills")
	}

	// IPv6: one bucket per /56, so hopping through a site's /64s does not help.
	allowed = 0
	for i := range 1000 {
		addr := fmt.Sprintf("/ip6/2001:db8:0:%x::1/tcp/4001", i&0xff)
		if l.Allow(conn(t, fakePeer(100_000+i), addr), now) {
			allowed++
		}
	}
	if allowed != ipBurst {
		t.Fatalf("a flood from one IPv6 /56 got %d events through, want %d", allowed, ipBurst)
	}
	if !l.Allow(conn(t, fakePeer(-3), "/ip6/2001:db8:0:100::1/tcp/4001"), now) {
		t.Fatal("the next /56 was starved")
	}
}

// One peer is limited by its own bucket whatever address it comes from.
func TestConnLimiterPerPeer(t *testing.T) {
	l := NewConnLimiter(Bucket{Rate: rate.Every(time.Minute), Burst: 2}, Bucket{Rate: 100, Burst: 100})
	now := time.Now()
	p := fakePeer(1)
	got := []bool{
		l.Allow(conn(t, p, "/ip4/192.0.2.1/tcp/1"), now),
		l.Allow(conn(t, p, "/ip4/192.0.2.2/tcp/1"), now),
		l.Allow(conn(t, p, "/ip4/192.0.2.3/tcp/1"), now),
		l.AllowPeer(p, now),
	}
	if want := []bool{true, true, false, false}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("one peer from three IPs: %v, want %v", got, want)
	}
}

// Relayed and loopback connections are limited per peer only: the relay's
// IP (or 127.0.0.1) is shared by peers that have nothing to do with each
// other.
func TestConnLimiterRelayedAndLoopbackPerPeerOnly(t *testing.T) {
	relay := "/ip4/192.0.2.50/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
	for _, addr := range []string{relay, "/ip4/127.0.0.1/tcp/4001", "/ip6/::1/udp/1/quic-v1"} {
		l := NewConnLimiter(Bucket{Rate: rate.Every(time.Minute), Burst: 1}, Bucket{Rate: rate.Every(time.Minute), Burst: 1})
		now := time.Now()
		for i := range 100 {
			if !l.Allow(conn(t, fakePeer(i), addr), now) {
				t.Fatalf("%s: peer %d was charged to a shared IP bucket", addr, i)
			}
		}
		if l.Allow(conn(t, fakePeer(0), addr), now) {
			t.Fatalf("%s: a peer's own bucket does not limit", addr)
		}
		if n := l.ips.lru.Len(); n != 0 {
			t.Fatalf("%s: %d IP buckets made", addr, n)
		}
	}
}

func TestRemoteIPBucket(t *testing.T) {
	for addr, want := range map[string]string{
		"/ip4/203.0.113.7/tcp/4001":              "203.0.113.7/32",
		"/ip6/2001:db8:1:2ff:1::9/udp/1/quic-v1": "2001:db8:1:200::/56",
		"/ip6/::ffff:198.51.100.1/tcp/1":         "198.51.100.1/32",
		"/ip4/127.0.0.1/tcp/1":                   "",
		"/dns4/example.com/tcp/1":                "",
		"/ip4/192.0.2.50/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit": "",
	} {
		p, ok := RemoteIPBucket(ma.StringCast(addr))
		got := ""
		if ok {
			got = p.String()
		}
		if got != want {
			t.Errorf("%s: bucket %q, want %q", addr, got, want)
		}
	}
}

func TestUnlimitedBuckets(t *testing.T) {
	l := NewConnLimiter(Bucket{}, Bucket{Rate: rate.Inf})
	now := time.Now()
	for range 1000 {
		if !l.Allow(conn(t, fakePeer(1), "/ip4/192.0.2.1/tcp/1"), now) {
			t.Fatal("an unlimited ConnLimiter refused")
		}
	}
	if l.peers.lru.Len()+l.ips.lru.Len() != 0 {
		t.Fatal("an unlimited ConnLimiter kept buckets")
	}
	pl := NewPeerLimiter(rate.Inf, 0)
	if !pl.Allow(fakePeer(1), now) {
		t.Fatal("an unlimited PeerLimiter refused")
	}
}
