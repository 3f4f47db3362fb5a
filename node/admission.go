package node

import (
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"
)

// admission holds the peers a joiner lets into its Raft and its gossip
// before it has a configuration of its own: the members its invite and its
// join response named. It is cleared once the join is decided; from then on
// only the configuration and the ledger decide.
type admission struct {
	mu    sync.Mutex
	peers map[peer.ID]bool
}

func (a *admission) add(p peer.ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.peers == nil {
		a.peers = map[peer.ID]bool{}
	}
	a.peers[p] = true
}

func (a *admission) has(p peer.ID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.peers[p]
}

func (a *admission) clear() {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.peers)
}
