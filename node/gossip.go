package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/node/pb"
	"github.com/p2pkey/p2pkey/p2p"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"
)

// GossipTopicPrefix names the per-cluster topic on which generations are
// announced; the cluster ID follows it.
const GossipTopicPrefix = "/p2pkey/generations/1.0.0/"

const (
	maxAnnouncement  = 1 << 10
	announceInterval = 30 * time.Second
)

// ErrBadAnnouncement is returned for a gossip message that fails checks.
var ErrBadAnnouncement = errors.New("bad generation announcement")

// CatchUp says this node heard of a generation its ledger does not have yet.
type CatchUp struct {
	Generation uint64    `json:"generation"`
	From       string    `json:"from"`
	Since      time.Time `json:"since"`
}

type gossip struct {
	ps    *pubsub.PubSub
	topic *pubsub.Topic
	sub   *pubsub.Subscription
	name  string
	warn  *rate.Limiter
	// perFrom limits the messages each peer hands this node (before they are
	// decoded); perAuthor the announcements accepted from each author.
	perFrom, perAuthor *p2p.PeerLimiter
	// lastLeader is the last leader this node's Raft followed: while Raft
	// knows none (this node cut off, or an election on), announcements by
	// that leader are still heard.
	lastLeader atomic.Pointer[peer.ID]
	// rejected counts the messages the validator refused.
	rejected atomic.Uint64
	// pending is the newest generation heard of and not yet checked; a
	// send on check wakes catchUpLoop.
	mu      sync.Mutex
	pending *heardGeneration
	check   chan struct{}
}

// heardGeneration is a generation the leader announced, awaiting its check.
type heardGeneration struct {
	CatchUp
	author peer.ID
}

// Announcements accepted per peer: a leader announces at most every
// 250 ms, and only when a generation changes state or every 30 s.
const (
	announceRate  = rate.Limit(4)
	announceBurst = 20
)

// catchUpGrace is how long Raft gets to bring the ledger to an announced
// generation before this node says it is catching up.
const catchUpGrace = time.Second

// errNotLeader: an announcement whose author is not the leader this node
// follows (or last followed).
var errNotLeader = errors.New("the author is not the leader")

// DecodeAnnouncement decodes and checks one announcement for cluster.
func DecodeAnnouncement(data []byte, cluster string) (*pb.GenerationAnnouncement, error) {
	if len(data) > maxAnnouncement {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadAnnouncement, len(data))
	}
	a := &pb.GenerationAnnouncement{}
	if err := proto.Unmarshal(data, a); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadAnnouncement, err)
	}
	if a.GetVersion() != 1 {
		return nil, fmt.Errorf("%w: version %d", ErrBadAnnouncement, a.GetVersion())
	}
	if a.GetClusterId() != cluster {
		return nil, fmt.Errorf("%w: cluster %q", ErrBadAnnouncement, a.GetClusterId())
	}
	switch a.GetState() {
	case "open", "committed", "aborted", "retired":
	default:
		return nil, fmt.Errorf("%w: state %q", ErrBadAnnouncement, a.GetState())
	}
	return a, nil
}

func (n *Node) startGossip(clusterID string) error {
	name := GossipTopicPrefix + clusterID
	ps, err := p2p.NewGossip(n.ctx, n.host, p2p.MembersOnly(name, n.knownMember)...)
	if err != nil {
		return fmt.Errorf("start gossip: %w", err)
	}
	g := &gossip{
		ps:        ps,
		name:      name,
		warn:      rate.NewLimiter(rate.Every(time.Second), 5),
		perFrom:   p2p.NewPeerLimiter(announceRate, announceBurst),
		perAuthor: p2p.NewPeerLimiter(announceRate, announceBurst),
		check:     make(chan struct{}, 1),
	}
	validate := func(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		return n.validateAnnouncement(g, from, m)
	}
	if err := ps.RegisterTopicValidator(g.name, validate); err != nil {
		return err
	}
	if g.topic, err = ps.Join(g.name); err != nil {
		return err
	}
	if g.sub, err = g.topic.Subscribe(); err != nil {
		return err
	}
	n.gossip = g
	n.wg.Add(2)
	go n.gossipLoop(clusterID)
	go n.catchUpLoop()
	return nil
}

// validateAnnouncement accepts only a well-formed announcement for this
// cluster, authored (signed: pubsub checks the signature against the
// author's key) by the leader this node knows, within the per-peer rates.
// Everything else is dropped and never forwarded.
func (n *Node) validateAnnouncement(g *gossip, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if from == n.host.ID() {
		return pubsub.ValidationAccept
	}
	now := n.now()
	if !g.perFrom.Allow(from, now) {
		return pubsub.ValidationIgnore
	}
	author := m.GetFrom()
	_, err := DecodeAnnouncement(m.GetData(), n.localClusterID())
	if err == nil {
		if leader := n.knownLeader(g); author != leader {
			err = fmt.Errorf("%w: %w: author %s, leader (%s)", ErrBadAnnouncement, errNotLeader, author, leader)
		}
	}
	if err != nil {
		g.rejected.Add(1)
		if g.warn.Allow() {
			// An announcement by someone this node does not (yet) see as
			// leader is routine around a join or a leadership hand-over; a
			// stranger's or a forged one is refused just the same.
			level := log.Warnw
			if errors.Is(err, errNotLeader) {
				level = log.Infow
			}
			level("refused gossip message", "from", from, "author", author, "err", err)
		}
		return pubsub.ValidationReject
	}
	if !g.perAuthor.Allow(author, now) {
		return pubsub.ValidationIgnore
	}
	return pubsub.ValidationAccept
}

// knownLeader is the leader this node's Raft follows, or, while Raft knows
// none, the last one it did.
func (n *Node) knownLeader(g *gossip) peer.ID {
	if l := n.cons.Leader(); l != "" {
		g.lastLeader.Store(&l)
		return l
	}
	if l := g.lastLeader.Load(); l != nil {
		return *l
	}
	return ""
}

// localClusterID is the cluster ID this node started with (made at
// bootstrap, named by its invite, or read from its cluster file): known
// before its ledger is, and equal to the ledger's once it is.
func (n *Node) localClusterID() string { return n.clusterID }

// knownMember decides who takes part in the gossip topic: a joining or
// active member of the local ledger (generations.MemberStatus.IsMember; removed,
// rejected and lapsed peers are out, as they are for Raft), or, while the
// ledger is empty (catching up from nothing), a member named by the join
// response or the peer book. Pubsub asks it from its event loop.
func (n *Node) knownMember(p peer.ID) bool {
	var known, empty bool
	n.view(func(l *generations.Ledger) {
		empty = !l.Bootstrapped()
		if m, ok := l.Member(p); ok {
			known = m.Status.IsMember()
		}
	})
	if known {
		return true
	}
	return empty && n.admitted.has(p)
}

func (n *Node) gossipLoop(clusterID string) {
	defer n.wg.Done()
	for {
		m, err := n.gossip.sub.Next(n.ctx)
		if err != nil {
			return
		}
		if m.ReceivedFrom == n.host.ID() {
			continue
		}
		a, err := DecodeAnnouncement(m.GetData(), clusterID)
		if err != nil {
			continue
		}
		n.heard(a, m.GetFrom())
	}
}

// newestGeneration is the number of the local ledger's newest generation.
func (n *Node) newestGeneration() uint64 {
	var newest uint64
	n.view(func(l *generations.Ledger) {
		if g, ok := l.Newest(); ok {
			newest = g.Number
		}
	})
	return newest
}

// heard records an announcement that passed the validator. An announcement
// only makes this node check: if it names a generation newer than the local
// ledger's, the node reconnects to the members, and catchUpLoop looks again
// after catchUpGrace; the status changes only if Raft has not delivered it by
// then and is not following the announcing leader.
func (n *Node) heard(a *pb.GenerationAnnouncement, author peer.ID) {
	newest := n.newestGeneration()
	n.events.publish(Event{Type: EventGenerationHeard, Peer: author, Detail: fmt.Sprintf("generation %d %s", a.GetGeneration(), a.GetState())})
	first := n.catchUp.firstHeard(heardKey{author, a.GetGeneration(), a.GetState()})
	if first {
		log.Infow("gossip: heard generation announcement", "author", author, "generation", a.GetGeneration(), "state", a.GetState())
	}
	if a.GetGeneration() <= newest {
		return
	}
	g := n.gossip
	g.mu.Lock()
	fresh := g.pending == nil || g.pending.Generation < a.GetGeneration()
	if fresh {
		g.pending = &heardGeneration{CatchUp{Generation: a.GetGeneration(), From: author.String(), Since: n.now()}, author}
	}
	g.mu.Unlock()
	if !fresh {
		return
	}
	select {
	case g.check <- struct{}{}:
	default:
	}
	go n.connectMembers(false)
}

// catchUpLoop checks announced generations after catchUpGrace (see heard).
func (n *Node) catchUpLoop() {
	defer n.wg.Done()
	g := n.gossip
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-g.check:
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(catchUpGrace):
		}
		g.mu.Lock()
		h := g.pending
		g.pending = nil
		g.mu.Unlock()
		if h != nil {
			n.confirmCatchUp(*h)
		}
	}
}

// confirmCatchUp shows h in the status if the local ledger still lacks its
// generation and Raft is not following its author: this node is then cut
// off from a leader that is ahead of it.
func (n *Node) confirmCatchUp(h heardGeneration) {
	newest := n.newestGeneration()
	if newest >= h.Generation {
		return
	}
	if n.cons.Leader() == h.author {
		log.Debugw("gossip: Raft follows the announcing leader; no catch-up to show", "generation", h.Generation, "local", newest)
		return
	}
	n.catchUp.mu.Lock()
	fresh := n.catchUp.pending == nil || n.catchUp.pending.Generation < h.Generation
	if fresh {
		c := h.CatchUp
		n.catchUp.pending = &c
	}
	n.catchUp.mu.Unlock()
	if fresh {
		log.Infow("catching up: the leader announced a generation the local ledger does not have", "generation", h.Generation, "local", newest, "from", h.author)
		n.events.publish(Event{Type: EventCatchingUp, Peer: h.author, Detail: fmt.Sprintf("generation %d (local ledger has %d)", h.Generation, newest)})
		go n.connectMembers(false)
	}
}

// catchUpState is what gossip told this node and Raft has not yet
// delivered, and which announcements it has logged.
type catchUpState struct {
	mu      sync.Mutex
	pending *CatchUp
	heard   map[heardKey]bool
	// vouch holds the peers members named as current while this node's
	// Raft refused them (vouch.go).
	vouch vouchState
}

// heardKey names one announcement: who said which generation is in which
// state.
type heardKey struct {
	author peer.ID
	gen    uint64
	state  string
}

// firstHeard reports whether k is new, remembering at most 1024 keys.
func (c *catchUpState) firstHeard(k heardKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.heard[k] {
		return false
	}
	if c.heard == nil || len(c.heard) > 1024 {
		c.heard = map[heardKey]bool{}
	}
	c.heard[k] = true
	return true
}

// catchingUp returns the pending catch-up, clearing it once the ledger has
// reached the announced generation.
func (n *Node) catchingUp() *CatchUp {
	newest := n.newestGeneration()
	n.catchUp.mu.Lock()
	defer n.catchUp.mu.Unlock()
	if n.catchUp.pending != nil && newest >= n.catchUp.pending.Generation {
		log.Infow("caught up", "generation", n.catchUp.pending.Generation)
		n.catchUp.pending = nil
	}
	if n.catchUp.pending == nil {
		return nil
	}
	c := *n.catchUp.pending
	return &c
}

// announce publishes the local view of the newest generation. The leader
// calls it when a generation changes state, and every announceInterval.
func (n *Node) announce(ctx context.Context) {
	if n.gossip == nil {
		return
	}
	a := &pb.GenerationAnnouncement{Version: 1, ClusterId: n.localClusterID(), RaftIndex: n.cons.AppliedIndex()}
	n.view(func(l *generations.Ledger) {
		if g, ok := l.Newest(); ok {
			a.Generation, a.State = g.Number, g.State.String()
		}
		if c, ok := l.Current(); ok {
			a.Current = c.Number
		}
	})
	if a.Generation == 0 {
		return
	}
	data, err := proto.Marshal(a)
	if err != nil {
		return
	}
	log.Debugw("announcing generation", "generation", a.Generation, "state", a.State)
	if err := n.gossip.topic.Publish(ctx, data); err != nil {
		log.Debugw("announce generation", "err", err)
	}
}

// announceLoop runs on every node; the leader announces the newest
// generation when it changes, and again every announceInterval. It wakes on
// ledger and leader changes, not on a ticker (issue 13).
func (n *Node) announceLoop() {
	defer n.wg.Done()
	var last string
	var lastAt time.Time
	n.onChange(func() time.Duration {
		n.knownLeader(n.gossip) // remember the leader for the validator
		if !n.cons.IsLeader() {
			return safetyNet
		}
		var key string
		n.view(func(l *generations.Ledger) {
			if g, ok := l.Newest(); ok {
				key = fmt.Sprint(g.Number, g.State)
			}
		})
		if key == "" {
			return safetyNet
		}
		if key != last || n.since(lastAt) >= announceInterval {
			last, lastAt = key, n.now()
			n.announce(n.ctx)
		}
		return announceInterval - n.since(lastAt)
	})
}
