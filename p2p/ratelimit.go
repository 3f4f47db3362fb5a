package p2p

import (
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"golang.org/x/time/rate"
)

// LimiterCap bounds each table of token buckets a PeerLimiter or a
// ConnLimiter keeps (rule S10): past it, the least recently used bucket is
// dropped. Dropping a bucket only ever gives its key a full one again, so
// eviction can never starve anyone; a flood that cycles through more keys
// than the cap is held by the coarser bucket (the IP's) or the caller's
// global limit.
const LimiterCap = 4096

// IPv6 addresses share a bucket per /56, the prefix go-libp2p's resource
// manager limits by: one site usually holds a whole /56 or more.
const ipv6BucketBits = 56

// Bucket is the shape of a token bucket: Rate events a second on average,
// and up to Burst at once. The zero Bucket, or a Rate of rate.Inf, does not
// limit.
type Bucket struct {
	Rate  rate.Limit
	Burst int
}

func (b Bucket) unlimited() bool { return b.Rate == rate.Inf || b == (Bucket{}) }

// table is a bounded set of token buckets keyed by K. It is not safe for
// concurrent use; its owner locks.
type table[K comparable] struct {
	b   Bucket
	lru *simplelru.LRU[K, *rate.Limiter]
}

func newTable[K comparable](b Bucket, capacity int) *table[K] {
	lru, err := simplelru.NewLRU[K, *rate.Limiter](capacity, nil)
	if err != nil {
		panic(err) // capacity < 1: a programming error
	}
	return &table[K]{b: b, lru: lru}
}

// get returns k's bucket, making a full one if k has none.
func (t *table[K]) get(k K) *rate.Limiter {
	if lim, ok := t.lru.Get(k); ok {
		return lim
	}
	lim := rate.NewLimiter(t.b.Rate, t.b.Burst)
	t.lru.Add(k, lim)
	return lim
}

// PeerLimiter is a token bucket per remote peer, for work a peer can ask of
// this node. Its table is bounded by LimiterCap (least recently used out).
// Handlers that a stranger can reach should use a ConnLimiter, which also
// limits per IP: peer IDs cost nothing to make.
type PeerLimiter struct {
	mu    sync.Mutex
	b     Bucket
	peers *table[peer.ID]
}

// NewPeerLimiter allows each peer r events per second with bursts of burst.
func NewPeerLimiter(r rate.Limit, burst int) *PeerLimiter {
	return newPeerLimiter(Bucket{Rate: r, Burst: burst}, LimiterCap)
}

func newPeerLimiter(b Bucket, capacity int) *PeerLimiter {
	return &PeerLimiter{b: b, peers: newTable[peer.ID](b, capacity)}
}

// Allow reports whether p may act now, and spends a token if so.
func (l *PeerLimiter) Allow(p peer.ID, now time.Time) bool {
	if l.b.Rate == rate.Inf {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.peers.get(p).AllowN(now, 1)
}

// ConnLimiter limits what the far end of a connection may ask of this node,
// with one token bucket per remote peer and one per remote IP (per /56 for
// IPv6), both bounded in memory (LimiterCap each, least recently used out).
// An event is allowed only when both buckets have a token, and a refused
// event spends none.
//
// Two kinds of connection are limited per peer only:
//   - Relayed connections. Their remote address is the relay's
//     (/ip4/R/.../p2p/RELAY/p2p-circuit): charging the relay's IP would put
//     every member behind one relay into one bucket. The relay bounds its
//     circuits itself (this project's relays admit members only).
//   - Loopback connections, which go-libp2p's resource manager does not
//     limit per IP either: every node of a test cluster, and of a local
//     testnet, shares 127.0.0.1.
type ConnLimiter struct {
	mu      sync.Mutex
	perPeer Bucket
	perIP   Bucket
	peers   *table[peer.ID]
	ips     *table[netip.Prefix]
}

// NewConnLimiter limits each remote peer to perPeer and each remote IP to
// perIP. A zero Bucket does not limit at its level.
func NewConnLimiter(perPeer, perIP Bucket) *ConnLimiter {
	return newConnLimiter(perPeer, perIP, LimiterCap)
}

func newConnLimiter(perPeer, perIP Bucket, capacity int) *ConnLimiter {
	return &ConnLimiter{
		perPeer: perPeer,
		perIP:   perIP,
		peers:   newTable[peer.ID](perPeer, capacity),
		ips:     newTable[netip.Prefix](perIP, capacity),
	}
}

// Allow reports whether the far end of c may act now, and if so spends a
// token from its peer's bucket and its IP's.
func (l *ConnLimiter) Allow(c network.Conn, now time.Time) bool {
	ip, ok := RemoteIPBucket(c.RemoteMultiaddr())
	return l.allow(c.RemotePeer(), ip, ok, now)
}

// AllowPeer is Allow for a peer known only by its ID: its peer bucket alone.
func (l *ConnLimiter) AllowPeer(p peer.ID, now time.Time) bool {
	return l.allow(p, netip.Prefix{}, false, now)
}

func (l *ConnLimiter) allow(p peer.ID, ip netip.Prefix, hasIP bool, now time.Time) bool {
	limitPeer, limitIP := !l.perPeer.unlimited(), hasIP && !l.perIP.unlimited()
	if !limitPeer && !limitIP {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	// The IP's bucket first: while it is empty, a flood of fresh peer IDs
	// from one address does not even take places in the peer table.
	var ipLim, peerLim *rate.Limiter
	if limitIP {
		if ipLim = l.ips.get(ip); ipLim.TokensAt(now) < 1 {
			return false
		}
	}
	if limitPeer {
		if peerLim = l.peers.get(p); peerLim.TokensAt(now) < 1 {
			return false
		}
		peerLim.AllowN(now, 1)
	}
	if ipLim != nil {
		ipLim.AllowN(now, 1)
	}
	return true
}

// RemoteIPBucket returns the prefix whose bucket a connection from addr is
// charged to: the IPv4 address, or the IPv6 address's /56. It reports false
// for addresses limited per peer only: relayed (p2p-circuit), loopback, and
// those with no IP.
func RemoteIPBucket(addr ma.Multiaddr) (netip.Prefix, bool) {
	if addr == nil {
		return netip.Prefix{}, false
	}
	if _, err := addr.ValueForProtocol(ma.P_CIRCUIT); err == nil {
		return netip.Prefix{}, false
	}
	ip, err := manet.ToIP(addr)
	if err != nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	if a.IsLoopback() {
		return netip.Prefix{}, false
	}
	bits := 32
	if a.Is6() {
		bits = ipv6BucketBits
	}
	return netip.PrefixFrom(a, bits).Masked(), true
}
