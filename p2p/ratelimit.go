package p2p

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"
)

// maxLimiters bounds the per-peer limiter table. When it is full, the
// limiters whose buckets have refilled (idle peers) are dropped: dropping
// a full bucket changes nothing for its peer.
const maxLimiters = 1024

// PeerLimiter is a token bucket per remote peer, for handlers that a
// stranger can reach. Its table is bounded: when full, the limiters of idle
// peers (full buckets) are dropped, which changes nothing for them.
type PeerLimiter struct {
	mu    sync.Mutex
	r     rate.Limit
	burst int
	m     map[peer.ID]*rate.Limiter
}

// NewPeerLimiter allows each peer r events per second with bursts of burst.
func NewPeerLimiter(r rate.Limit, burst int) *PeerLimiter {
	return &PeerLimiter{r: r, burst: burst, m: make(map[peer.ID]*rate.Limiter)}
}

// Allow reports whether p may act now, and spends a token if so.
func (l *PeerLimiter) Allow(p peer.ID, now time.Time) bool {
	if l.r == rate.Inf {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.m[p]
	if !ok {
		if len(l.m) >= maxLimiters {
			for id, other := range l.m {
				if other.TokensAt(now) >= float64(l.burst) {
					delete(l.m, id)
				}
			}
		}
		lim = rate.NewLimiter(l.r, l.burst)
		l.m[p] = lim
	}
	return lim.AllowN(now, 1)
}
