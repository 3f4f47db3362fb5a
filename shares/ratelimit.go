package shares

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

// peerLimiter is a token bucket per remote peer.
type peerLimiter struct {
	mu    sync.Mutex
	r     rate.Limit
	burst int
	m     map[peer.ID]*rate.Limiter
}

func newPeerLimiter(r rate.Limit, burst int) *peerLimiter {
	return &peerLimiter{r: r, burst: burst, m: make(map[peer.ID]*rate.Limiter)}
}

func (l *peerLimiter) allow(p peer.ID, now time.Time) bool {
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
