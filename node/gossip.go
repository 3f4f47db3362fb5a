package node

import (
	"context"
	"errors"
	"fmt"
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
}

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
	ps, err := p2p.NewGossip(n.ctx, n.host)
	if err != nil {
		return fmt.Errorf("start gossip: %w", err)
	}
	g := &gossip{ps: ps, name: GossipTopicPrefix + clusterID, warn: rate.NewLimiter(rate.Every(time.Second), 5)}
	if err := ps.RegisterTopicValidator(g.name, n.validateAnnouncement); err != nil {
		return err
	}
	if g.topic, err = ps.Join(g.name); err != nil {
		return err
	}
	if g.sub, err = g.topic.Subscribe(); err != nil {
		return err
	}
	n.gossip = g
	n.wg.Add(1)
	go n.gossipLoop(clusterID)
	return nil
}

// validateAnnouncement refuses (and logs) anything that is not a well-formed
// announcement for this cluster by a peer this node knows as a member.
func (n *Node) validateAnnouncement(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if from == n.host.ID() {
		return pubsub.ValidationAccept
	}
	author := m.GetFrom()
	_, err := DecodeAnnouncement(m.GetData(), n.localClusterID())
	if err == nil && !n.knownMember(author) {
		err = fmt.Errorf("%w: author %s is not a known member", ErrBadAnnouncement, author)
	}
	if err != nil {
		if n.gossip != nil && n.gossip.warn.Allow() {
			log.Warnw("refused gossip message", "from", from, "author", author, "err", err)
		}
		return pubsub.ValidationReject
	}
	return pubsub.ValidationAccept
}

// localClusterID is the cluster ID this node started with (made at
// bootstrap, named by its invite, or read from its cluster file): known
// before its ledger is, and equal to the ledger's once it is.
func (n *Node) localClusterID() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.clusterID
}

// knownMember: an active or joining member of the local ledger, or, while
// the ledger is empty (catching up from nothing), a member named by the join
// response or the peer book.
func (n *Node) knownMember(p peer.ID) bool {
	var known, empty bool
	n.view(func(l *generations.Ledger) {
		empty = !l.Bootstrapped()
		if m, ok := l.Member(p); ok {
			known = m.Status == generations.StatusActive || m.Status == generations.StatusJoining
		}
	})
	if known {
		return true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return empty && n.allowed[p]
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

// heard records an announcement. If it names a generation newer than the
// local ledger's, the node is catching up: it says so, reconnects to the
// cluster, and its duties start as soon as the ledger arrives.
func (n *Node) heard(a *pb.GenerationAnnouncement, author peer.ID) {
	var newest uint64
	n.view(func(l *generations.Ledger) {
		if gs := l.Generations(); len(gs) > 0 {
			newest = gs[len(gs)-1].Number
		}
	})
	n.events.publish(Event{Type: EventGenerationHeard, Peer: author, Detail: fmt.Sprintf("generation %d %s", a.GetGeneration(), a.GetState())})
	key := fmt.Sprintf("%s/%d/%s", author, a.GetGeneration(), a.GetState())
	n.mu.Lock()
	first := !n.heardSet[key]
	if first {
		if len(n.heardSet) > 1024 {
			n.heardSet = map[string]bool{}
		}
		n.heardSet[key] = true
	}
	n.mu.Unlock()
	if first {
		log.Infow("gossip: heard generation announcement", "author", author, "generation", a.GetGeneration(), "state", a.GetState())
	}
	if a.GetGeneration() <= newest {
		return
	}
	n.mu.Lock()
	fresh := n.catchUp == nil || n.catchUp.Generation < a.GetGeneration()
	if fresh {
		n.catchUp = &CatchUp{Generation: a.GetGeneration(), From: author.String(), Since: time.Now()}
	}
	n.mu.Unlock()
	if fresh {
		log.Infow("catching up: heard of a generation the local ledger does not have", "generation", a.GetGeneration(), "local", newest, "from", author)
		n.events.publish(Event{Type: EventCatchingUp, Peer: author, Detail: fmt.Sprintf("generation %d (local ledger has %d)", a.GetGeneration(), newest)})
		go n.connectMembers()
	}
}

// catchingUp returns the pending catch-up, clearing it once the ledger has
// reached the announced generation.
func (n *Node) catchingUp() *CatchUp {
	var newest uint64
	n.view(func(l *generations.Ledger) {
		if gs := l.Generations(); len(gs) > 0 {
			newest = gs[len(gs)-1].Number
		}
	})
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.catchUp != nil && newest >= n.catchUp.Generation {
		log.Infow("caught up", "generation", n.catchUp.Generation)
		n.catchUp = nil
	}
	if n.catchUp == nil {
		return nil
	}
	c := *n.catchUp
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
		if gs := l.Generations(); len(gs) > 0 {
			g := gs[len(gs)-1]
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

// announceLoop runs on every node; the leader announces.
func (n *Node) announceLoop() {
	defer n.wg.Done()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var last string
	var lastAt time.Time
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-tick.C:
		}
		if !n.cons.IsLeader() {
			continue
		}
		var key string
		n.view(func(l *generations.Ledger) {
			if gs := l.Generations(); len(gs) > 0 {
				g := gs[len(gs)-1]
				key = fmt.Sprint(g.Number, g.State)
			}
		})
		if key == "" || (key == last && time.Since(lastAt) < announceInterval) {
			continue
		}
		last, lastAt = key, time.Now()
		n.announce(n.ctx)
	}
}
