package p2p

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	ma "github.com/multiformats/go-multiaddr"
)

// A node behind a symmetric NAT opens every circuit through its relay, and
// go-libp2p counts each against the relay's IP. The relay's IP must not run
// into the per-IP limits that still hold for every other address.
func TestRelayIPIsExemptFromPerIPConnLimits(t *testing.T) {
	relayID, err := peer.Decode("12D3KooWBmSBRFJGic4fo6JFrorBF89F9BL9kFpAfpZbg9pAqkpg")
	if err != nil {
		t.Fatal(err)
	}
	relay := peer.AddrInfo{ID: relayID, Addrs: []ma.Multiaddr{ma.StringCast("/ip4/11.11.0.10/tcp/4001")}}
	limits := rcmgr.DefaultLimits.AutoScale()
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits), relayConnLimits([]peer.AddrInfo{relay})...)
	if err != nil {
		t.Fatal(err)
	}
	defer rm.Close()

	open := func(addr string, n int) (opened int, err error) {
		circuit := ma.StringCast(addr)
		var scopes []network.ConnManagementScope
		defer func() {
			for _, s := range scopes {
				s.Done()
			}
		}()
		for range n {
			s, err := rm.OpenConnection(network.DirOutbound, true, circuit)
			if err != nil {
				return len(scopes), err
			}
			scopes = append(scopes, s)
		}
		return len(scopes), nil
	}
	if got, err := open("/ip4/11.11.0.10/tcp/4001/p2p/"+relayID.String()+"/p2p-circuit", 40); err != nil {
		t.Fatalf("40 concurrent circuits through the relay: only %d opened: %v", got, err)
	}
	if got, err := open("/ip4/11.11.0.20/tcp/4001", 40); err == nil {
		t.Fatalf("40 concurrent connections to another address all opened (%d): the default per-IP limit is gone", got)
	}
}
