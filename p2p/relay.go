package p2p

import (
	"fmt"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
)

// memberACL lets only cluster members use this node's relay: a reservation
// only for a member, a circuit only from a member to a member. Strangers get
// PERMISSION_DENIED for both.
//
// go-libp2p's relay v2 applies one Limit to every circuit, so the tiers are
// "members: unlimited" and "strangers: refused" (see docs/NAT.md).
type memberACL struct {
	isMember func(peer.ID) bool
}

var _ relayv2.ACLFilter = memberACL{}

// AllowReserve implements relayv2.ACLFilter.
func (a memberACL) AllowReserve(p peer.ID, _ ma.Multiaddr) bool {
	ok := a.isMember(p)
	if !ok {
		log.Debugw("relay: refused a reservation from a stranger", "peer", p)
	}
	return ok
}

// AllowConnect implements relayv2.ACLFilter.
func (a memberACL) AllowConnect(src peer.ID, _ ma.Multiaddr, dest peer.ID) bool {
	ok := a.isMember(src) && a.isMember(dest)
	if !ok {
		log.Debugw("relay: refused a circuit", "src", src, "dest", dest)
	}
	return ok
}

// memberRelayResources sizes the relay for cluster traffic (rule N1). There
// is no per-circuit Limit (nil): Raft, gossip and share streams live as long
// as the members need them, and the relayed connection is not "limited", so
// every stream works over it. The counts fit a cluster of up to a few dozen
// members, several of them behind one NAT address.
func memberRelayResources() relayv2.Resources {
	rc := relayv2.DefaultResources()
	rc.Limit = nil
	rc.MaxReservations = 128
	rc.MaxCircuits = 64
	rc.BufferSize = 32 << 10
	rc.MaxReservationsPerIP = 32
	rc.MaxReservationsPerASN = 64
	return rc
}

// relayService runs the members-only relay while the host is publicly
// reachable. It replaces go-libp2p's EnableRelayService, which follows only
// AutoNAT v1 (see natState.start). Its methods are called from one
// goroutine; a nil *relayService does nothing.
type relayService struct {
	h        host.Host
	isMember func(peer.ID) bool
	relay    *relayv2.Relay
}

func (r *relayService) start() {
	if r == nil || r.relay != nil {
		return
	}
	relay, err := relayv2.New(r.h, relayv2.WithResources(memberRelayResources()), relayv2.WithACL(memberACL{isMember: r.isMember}))
	if err != nil {
		log.Warnw("relay service did not start", "err", err)
		return
	}
	r.relay = relay
	log.Infow("relay service started for members", "peer", r.h.ID())
}

func (r *relayService) stop() {
	if r == nil || r.relay == nil {
		return
	}
	r.relay.Close()
	r.relay = nil
	log.Infow("relay service stopped: not publicly reachable", "peer", r.h.ID())
}

// CircuitAddrs returns the addresses that reach target through each relay:
// <relay addr>/p2p/<relay>/p2p-circuit. Adding them to the peerstore for a
// member lets this node reach it through a relay as soon as the member holds
// a reservation there, before the member has announced its own relay
// addresses.
func CircuitAddrs(relays []peer.AddrInfo, target peer.ID) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, r := range relays {
		if r.ID == target {
			continue
		}
		circuit, err := ma.NewMultiaddr(fmt.Sprintf("/p2p/%s/p2p-circuit", r.ID))
		if err != nil {
			continue
		}
		for _, a := range r.Addrs {
			if isCircuitAddr(a) {
				continue
			}
			out = append(out, a.Encapsulate(circuit))
		}
	}
	return out
}

// ParseRelays parses full relay multiaddrs (/ip4/.../tcp/.../p2p/ID), as
// the --relay flag and the invite carry them, into one AddrInfo per relay.
func ParseRelays(addrs []string) ([]peer.AddrInfo, error) {
	mas := make([]ma.Multiaddr, 0, len(addrs))
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("relay address %q: %w", s, err)
		}
		if _, err := a.ValueForProtocol(ma.P_P2P); err != nil {
			return nil, fmt.Errorf("relay address %q: it must end in /p2p/<peer ID>", s)
		}
		mas = append(mas, a)
	}
	infos, err := peer.AddrInfosFromP2pAddrs(mas...)
	if err != nil {
		return nil, fmt.Errorf("relay addresses: %w", err)
	}
	return infos, nil
}

// ClearDialBackoff forgets failed dials to p, so the next stream to it dials
// again. A member reached only through a relay is often dialled before this
// node's own relay connection is back (just after a restart); the swarm then
// backs off for seconds, growing with each failure, though the relay is up
// a moment later. Callers use it for dials that matter and are throttled
// (share fetches and pushes), never in a loop.
func ClearDialBackoff(h host.Host, p peer.ID) {
	if s, ok := h.Network().(interface{ Backoff() *swarm.DialBackoff }); ok {
		s.Backoff().Clear(p)
	}
}
