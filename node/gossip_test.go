package node

import (
	"context"
	"strings"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/node/pb"
	"github.com/p2pkey/p2pkey/p2p"
	"google.golang.org/protobuf/proto"
)

// leaderAndFollowers splits nodes by who Raft says leads.
func leaderAndFollowers(t *testing.T, nodes []*Node) (*Node, []*Node) {
	t.Helper()
	var leader *Node
	var followers []*Node
	waitFor(t, "a leader among the nodes", 10*time.Second, func() bool {
		leader, followers = nil, nil
		for _, n := range nodes {
			if n.cons.IsLeader() {
				leader = n
			} else {
				followers = append(followers, n)
			}
		}
		return leader != nil
	})
	return leader, followers
}

// stranger is a libp2p host that is no member but knows the cluster ID,
// subscribed to the generations topic.
func stranger(t *testing.T, ctx context.Context, newPubSub func(context.Context, host.Host) (*pubsub.PubSub, error), clusterID string, members []*Node) (host.Host, *pubsub.Topic, *pubsub.Subscription) {
	t.Helper()
	priv, err := loadOrCreateIdentity(testConfig(t).IdentityPath())
	if err != nil {
		t.Fatal(err)
	}
	h, err := p2p.New(priv, p2p.WithListenAddrs("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ps, err := newPubSub(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join(GossipTopicPrefix + clusterID)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range members {
		if err := h.Connect(ctx, peer.AddrInfo{ID: n.ID(), Addrs: n.host.Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	return h, topic, sub
}

// Acceptance 3, first half (rule S10): a stranger that knows the cluster ID
// and subscribes to the generations topic receives nothing, however it
// speaks pubsub, while members hear every announcement.
func TestGossipStrangerReceivesNothing(t *testing.T) {
	nodes := testCluster(t, 3)
	leader, followers := leaderAndFollowers(t, nodes)
	ctx := ctxT(t, 30*time.Second)
	cluster := leader.ClusterID()

	// One stranger speaks gossipsub as go-libp2p does by default (floodsub
	// included, flood publishing on), one floodsub only.
	gossiper, gTopic, gSub := stranger(t, ctx, func(ctx context.Context, h host.Host) (*pubsub.PubSub, error) {
		return pubsub.NewGossipSub(ctx, h, pubsub.WithFloodPublish(true))
	}, cluster, nodes)
	_, _, fSub := stranger(t, ctx, func(ctx context.Context, h host.Host) (*pubsub.PubSub, error) {
		return pubsub.NewFloodSub(ctx, h)
	}, cluster, nodes)

	// Both sides know of each other's subscription: the stranger is as far
	// into the topic as pubsub lets anyone get without membership.
	waitFor(t, "the stranger and the leader to see each other on the topic", 10*time.Second, func() bool {
		return len(gTopic.ListPeers()) == len(nodes) && contains(leader.gossip.ps.ListPeers(leader.gossip.name), gossiper.ID())
	})

	got := make(chan string, 2)
	for name, sub := range map[string]*pubsub.Subscription{"gossipsub": gSub, "floodsub": fSub} {
		go func() {
			if _, err := sub.Next(ctx); err == nil {
				got <- name
			}
		}()
	}
	events := make([]<-chan Event, len(followers))
	for i, f := range followers {
		ch, cancel := f.Events()
		defer cancel()
		events[i] = ch
	}

	// The leader announces four times a second for 3 s: long enough for
	// pubsub's heartbeats to graft and gossip to anyone they would.
	heard := make([]bool, len(followers))
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	window := time.After(3 * time.Second)
	for {
		select {
		case name := <-got:
			t.Fatalf("the %s stranger received an announcement", name)
		case <-tick.C:
			leader.announce(ctx)
			for i, ch := range events {
				for drained := false; !drained; {
					select {
					case e := <-ch:
						heard[i] = heard[i] || (e.Type == EventGenerationHeard && e.Peer == leader.ID())
					default:
						drained = true
					}
				}
			}
		case <-window:
			for i, ok := range heard {
				if !ok {
					t.Fatalf("follower %s never heard the leader: the topic does not work", followers[i].ID())
				}
			}
			return
		}
	}
}

func contains(ps []peer.ID, p peer.ID) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// lie is a well-formed announcement of a generation no ledger has.
func lie(t *testing.T, n *Node) []byte {
	t.Helper()
	data, err := proto.Marshal(&pb.GenerationAnnouncement{Version: 1, ClusterId: n.ClusterID(), Generation: current(n) + 5, State: "open"})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

type statusView struct {
	generation uint64
	catchingUp bool
}

func viewOf(n *Node) statusView {
	st := n.Status()
	return statusView{generation: current(n), catchingUp: st.CatchingUp != nil}
}

// Acceptance 3, second half: a member that is not the leader announces a
// made-up generation. Every other member's validator rejects it, and no
// node's status or generation changes.
func TestGossipMadeUpAnnouncementChangesNothing(t *testing.T) {
	nodes := testCluster(t, 3)
	leader, followers := leaderAndFollowers(t, nodes)
	liar := followers[0]
	others := []*Node{leader, followers[1]}
	before := map[peer.ID]statusView{}
	rejected := map[peer.ID]uint64{}
	for _, n := range nodes {
		before[n.ID()] = viewOf(n)
		if before[n.ID()].catchingUp {
			t.Fatalf("%s is catching up before the test", n.ID())
		}
		rejected[n.ID()] = n.gossip.rejected.Load()
	}
	var events []<-chan Event
	for _, n := range others {
		ch, cancel := n.Events()
		defer cancel()
		events = append(events, ch)
	}

	ctx := ctxT(t, 30*time.Second)
	// Publish until every other member has rejected the lie: the mesh may
	// still be forming just after the cluster did.
	waitFor(t, "every other member to reject the made-up announcement", 10*time.Second, func() bool {
		if err := liar.gossip.topic.Publish(ctx, lie(t, liar)); err != nil {
			t.Fatal(err)
		}
		for _, n := range others {
			if n.gossip.rejected.Load() == rejected[n.ID()] {
				return false
			}
		}
		return true
	})

	// Nothing the liar said may reach heard, now or after the grace a
	// catch-up check takes.
	end := time.Now().Add(2 * catchUpGrace)
	for _, ch := range events {
		deadline := time.After(time.Until(end))
	watch:
		for {
			select {
			case e := <-ch:
				if e.Type == EventCatchingUp || (e.Type == EventGenerationHeard && e.Peer == liar.ID()) {
					t.Fatalf("a member acted on the made-up announcement: %+v", e)
				}
			case <-deadline:
				break watch
			}
		}
	}
	for _, n := range nodes {
		if got := viewOf(n); got != before[n.ID()] {
			t.Fatalf("%s: status went from %+v to %+v", n.ID(), before[n.ID()], got)
		}
	}
}

// A validated announcement only makes a node check: the leader's own
// announcement of a generation its ledger does not have is heard, but a
// follower whose Raft follows that leader does not show it is catching up.
func TestGossipLeaderAnnouncementOnlyTriggersACheck(t *testing.T) {
	nodes := testCluster(t, 2)
	leader, followers := leaderAndFollowers(t, nodes)
	f := followers[0]
	before := viewOf(f)
	events, cancel := f.Events()
	defer cancel()
	ctx := ctxT(t, 30*time.Second)
	data := lie(t, leader)
	var heardAt time.Time
	waitFor(t, "the follower to hear the leader's announcement", 10*time.Second, func() bool {
		if err := leader.gossip.topic.Publish(ctx, data); err != nil {
			t.Fatal(err)
		}
		for {
			select {
			case e := <-events:
				if e.Type == EventCatchingUp {
					t.Fatalf("the follower shows catching up at once: %+v", e)
				}
				if e.Type == EventGenerationHeard && e.Peer == leader.ID() && strings.HasSuffix(e.Detail, " open") {
					heardAt = time.Now()
					return true
				}
			default:
				return false
			}
		}
	})
	deadline := time.After(catchUpGrace + time.Second - time.Since(heardAt))
	for {
		select {
		case e := <-events:
			if e.Type == EventCatchingUp {
				t.Fatalf("an announcement alone changed the follower's status: %+v", e)
			}
		case <-deadline:
			if got := viewOf(f); got != before {
				t.Fatalf("status went from %+v to %+v", before, got)
			}
			return
		}
	}
}
