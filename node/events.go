package node

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/shares"
)

// EventType names what happened.
type EventType string

// Event types.
const (
	EventBootstrapped    EventType = "bootstrapped"
	EventJoined          EventType = "joined"
	EventMemberAdded     EventType = "member_added"
	EventMemberRemoved   EventType = "member_removed"
	EventLeft            EventType = "left" // this node left the cluster (Leave)
	EventMemberChanged   EventType = "member_changed"
	EventLeaderChanged   EventType = "leader_changed"
	EventGenerationOpen  EventType = "generation_opened"
	EventGenerationDone  EventType = "generation_changed" // committed, aborted or retired
	EventUnlocked        EventType = "unlocked"
	EventGenerationHeard EventType = "generation_heard"
	EventCatchingUp      EventType = "catching_up"
	EventAuditFailed     EventType = "audit_failed"
)

// Event is one thing the node observed. Peer and Detail depend on Type.
type Event struct {
	Type   EventType `json:"type"`
	Time   time.Time `json:"time"`
	Peer   peer.ID   `json:"peer,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// broadcaster fans events out to subscribers. A slow subscriber loses events
// rather than stalling the node; its channel has room for 64.
type broadcaster struct {
	mu     sync.Mutex
	subs   map[chan Event]struct{}
	closed bool
}

func newBroadcaster() *broadcaster { return &broadcaster{subs: map[chan Event]struct{}{}} }

func (b *broadcaster) publish(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	log.Debugw("event", "type", e.Type, "peer", e.Peer, "detail", e.Detail)
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- e:
		default:
		}
	}
}

func (b *broadcaster) subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 64)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		close(ch)
		return ch, func() {}
	}
	b.subs[ch] = struct{}{}
	return ch, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if _, ok := b.subs[ch]; ok {
			delete(b.subs, ch)
			close(ch)
		}
	}
}

func (b *broadcaster) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for ch := range b.subs {
		delete(b.subs, ch)
		close(ch)
	}
}

// Events returns a stream of the node's events and a function that ends the
// subscription. The channel is closed when the node closes.
func (n *Node) Events() (<-chan Event, func()) { return n.events.subscribe() }

// Observer is told what only this node sees as it happens, for metrics: as a
// holder, every envelope it stores, serves, refuses or deletes, and as an
// owner, each push and fetch (shares.Observer); and each unlock, with how
// long the locked node's attempts took from the first to the key. Methods
// must be cheap, safe for concurrent use, and must not block.
type Observer interface {
	shares.Observer
	Unlocked(took time.Duration)
}
