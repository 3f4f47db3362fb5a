package p2p

import (
	"context"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// MaxGossipMessage bounds every gossip message this node accepts or sends.
const MaxGossipMessage = 4 << 10

// NewGossip starts gossipsub for a small cluster. Messages are signed by
// their author and strictly verified; flood publishing is on, since a
// publish right after joining may otherwise reach no one in a small mesh;
// peer exchange is off (members find each other through the ledger). Its
// streams may use relayed (limited) connections (rule N1).
func NewGossip(ctx context.Context, h host.Host, opts ...pubsub.Option) (*pubsub.PubSub, error) {
	base := []pubsub.Option{
		pubsub.WithMessageSigning(true),
		pubsub.WithStrictSignatureVerification(true),
		pubsub.WithFloodPublish(true),
		pubsub.WithPeerExchange(false),
		pubsub.WithMaxMessageSize(MaxGossipMessage),
	}
	return pubsub.NewGossipSub(ctx, limitedOK{h}, append(base, opts...)...)
}

// limitedOK lets gossipsub open its streams over limited (relayed)
// connections, which libp2p refuses unless the context says so.
type limitedOK struct{ host.Host }

func (h limitedOK) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	return h.Host.NewStream(network.WithAllowLimitedConn(ctx, "p2pkey-gossip"), p, pids...)
}
