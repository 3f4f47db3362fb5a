package node

import (
	"context"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
)

// safetyNet is how long a loop waiting on events sleeps when it has no work
// in hand: it only covers an event this node could have missed. An idle node
// wakes for nothing else (issue 13).
const safetyNet = time.Minute

// changes is a broadcast of "something this node waits on happened": the
// ledger applied a command, Raft changed leader, or a connection to a peer
// came or went. A loop takes the channel before it looks at the state and
// waits on it after, so that no change between the two is missed.
type changes struct {
	mu sync.Mutex
	ch chan struct{}
	n  uint64 // notifications so far
}

func newChanges() *changes { return &changes{ch: make(chan struct{})} }

// C returns a channel closed at the next change.
func (c *changes) C() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ch
}

// count returns how many changes there have been.
func (c *changes) count() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func (c *changes) notify() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	close(c.ch)
	c.ch = make(chan struct{})
}

// changeLoop feeds n.changed from Raft's leader changes and the host's
// connection events (ledger applies notify it directly, see onApplied).
func (n *Node) changeLoop() {
	defer n.wg.Done()
	sub, err := n.host.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged))
	if err != nil {
		log.Warnw("no connection events: membership loops fall back to their safety net", "err", err)
		return
	}
	defer sub.Close()
	for {
		leader := n.cons.LeaderChanged()
		select {
		case <-n.ctx.Done():
			return
		case <-leader:
		case <-sub.Out():
		}
		n.changed.notify()
		if n.keys.get() == nil {
			n.pokeKeys() // a locked node retries its unlock when a holder connects
		}
	}
}

// waitUntil returns nil once cond holds, checking it at every change (the
// ledger, the Raft configuration, the leader, connections), or ctx's error.
func (n *Node) waitUntil(ctx context.Context, cond func() bool) error {
	safety := time.NewTimer(safetyNet)
	defer safety.Stop()
	for {
		c := n.changed.C()
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-n.ctx.Done():
			return n.ctx.Err()
		case <-c:
		case <-safety.C:
			safety.Reset(safetyNet)
		}
	}
}

// onChange runs pass now and then again at every change, or once the delay
// pass returned has elapsed, until the node stops. A pass returns a short
// delay while it has work in hand that no event announces (a deadline, a
// retry) and safetyNet otherwise.
func (n *Node) onChange(pass func() time.Duration) {
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for {
		c := n.changed.C()
		t.Reset(pass())
		select {
		case <-n.ctx.Done():
			return
		case <-c:
			t.Stop() // Go 1.23+ timers: no stale value is left to drain
		case <-t.C:
		}
	}
}

// now is the node's clock: Config.Clock, or the wall clock. Every deadline,
// stamp and age the node computes reads it, so a test can move time.
func (n *Node) now() time.Time { return n.cfg.now() }

func (n *Node) since(t time.Time) time.Duration { return n.now().Sub(t) }

func (n *Node) until(t time.Time) time.Duration { return t.Sub(n.now()) }
