package p2p

import (
	"errors"
	"io"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
)

// MDNSServiceTag is the DNS-SD service p2pkey nodes announce on their LAN
// (rule N2). It is fixed and versioned rather than per cluster: mDNS only
// supplies addresses, and the node keeps only the peers that are members of
// its cluster. It fits DNS-SD's 15-character service name limit.
const MDNSServiceTag = "_p2pkey-v1._udp"

// StartMDNS announces h on every multicast-capable interface under
// serviceTag and calls onPeer, from its own goroutine, for every other host
// it hears announcing the same tag. onPeer gets only the peer's LAN
// addresses; deciding whether to dial it is the caller's job. Close the
// returned io.Closer to stop.
func StartMDNS(h host.Host, serviceTag string, onPeer func(peer.AddrInfo)) (io.Closer, error) {
	if serviceTag == "" {
		return nil, errors.New("mdns: empty service tag")
	}
	if onPeer == nil {
		return nil, errors.New("mdns: nil onPeer")
	}
	svc := mdns.NewMdnsService(h, serviceTag, mdnsNotifee(onPeer))
	if err := svc.Start(); err != nil {
		svc.Close()
		return nil, err
	}
	log.Debugw("mdns: announcing", "peer", h.ID(), "service", serviceTag)
	return svc, nil
}

type mdnsNotifee func(peer.AddrInfo)

func (f mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) { f(ai) }
