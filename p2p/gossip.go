package p2p

import (
	"context"
	"slices"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// MaxGossipMessage bounds every gossip message this node accepts or sends.
const MaxGossipMessage = 4 << 10

// NewGossip starts gossipsub for a small cluster. Messages are signed by
// their author and strictly verified; peer exchange is off (members find
// each other through the ledger). Its streams may use relayed (limited)
// connections (rule N1).
//
// Every message travels through the mesh, never by flood publishing nor to
// floodsub peers: those two paths send to every peer that announced the
// topic, bypassing the peer filter MembersOnly installs. Call it with
// MembersOnly's options so that only members take part.
func NewGossip(ctx context.Context, h host.Host, opts ...pubsub.Option) (*pubsub.PubSub, error) {
	protos := slices.DeleteFunc(slices.Clone(pubsub.GossipSubDefaultProtocols), func(p protocol.ID) bool {
		return p == pubsub.FloodSubID
	})
	base := []pubsub.Option{
		pubsub.WithMessageSigning(true),
		pubsub.WithStrictSignatureVerification(true),
		pubsub.WithFloodPublish(false),
		pubsub.WithGossipSubProtocols(protos, pubsub.GossipSubDefaultFeatures),
		pubsub.WithPeerExchange(false),
		pubsub.WithMaxMessageSize(MaxGossipMessage),
	}
	return pubsub.NewGossipSub(ctx, limitedOK{h}, append(base, opts...)...)
}

// Scores that MembersOnly gives: members 0, anyone else strangerScore, far
// below every threshold.
const (
	strangerScore     = -1000
	gossipThreshold   = -10
	publishThreshold  = -20
	graylistThreshold = -30
)

// MembersOnly returns the pubsub options that keep topic to the peers
// isMember accepts, rule S10. isMember is asked live, from pubsub's event
// loop, so a peer takes part from the moment it becomes a member and stops
// when it is removed; it must be quick and must not call into pubsub.
//
//   - A peer filter: no one else is grafted into the mesh, sent gossip
//     (IHAVE), or served a message (IWANT).
//   - A peer score of 0 for members and strangerScore for anyone else,
//     below the graylist threshold: pubsub ignores every RPC a non-member
//     sends (bar its subscriptions), never publishes to it, and prunes a
//     member from the mesh once it is removed.
//   - A subscription filter: only topic is tracked, at most 4 topics per
//     RPC, so a stranger cannot make this node remember topics of its own.
//
// Subscriptions to topic are tracked for every peer: a joiner announces its
// subscription when it connects, before it is a member, and pubsub would
// never hear it again. Knowing a stranger's subscription sends it nothing.
func MembersOnly(topic string, isMember func(peer.ID) bool) []pubsub.Option {
	member := func(p peer.ID, t string) bool { return t == topic && isMember(p) }
	score := func(p peer.ID) float64 {
		if isMember(p) {
			return 0
		}
		return strangerScore
	}
	return []pubsub.Option{
		pubsub.WithPeerFilter(member),
		pubsub.WithPeerScore(&pubsub.PeerScoreParams{
			AppSpecificScore:  score,
			AppSpecificWeight: 1,
			DecayInterval:     time.Second,
			DecayToZero:       0.01,
		}, &pubsub.PeerScoreThresholds{
			GossipThreshold:   gossipThreshold,
			PublishThreshold:  publishThreshold,
			GraylistThreshold: graylistThreshold,
			AcceptPXThreshold: 0,
		}),
		pubsub.WithSubscriptionFilter(pubsub.WrapLimitSubscriptionFilter(pubsub.NewAllowlistSubscriptionFilter(topic), 4)),
	}
}

// limitedOK lets gossipsub open its streams over limited (relayed)
// connections, which libp2p refuses unless the context says so.
type limitedOK struct{ host.Host }

func (h limitedOK) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	return h.Host.NewStream(network.WithAllowLimitedConn(ctx, "p2pkey-gossip"), p, pids...)
}
