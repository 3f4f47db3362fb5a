package p2p

import (
	"math"
	"net/netip"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/x/rate"
	manet "github.com/multiformats/go-multiaddr/net"
)

// relayConnLimits lifts the resource manager's per-IP connection limits for
// the cluster's relays. go-libp2p counts a relayed connection against the
// IP at the front of its circuit address, the relay's: a node behind a
// symmetric NAT reaches every other NAT'd member through one relay, so with
// the defaults (8 concurrent connections and a burst of 16 new ones, then one
// per 5 s, per IPv4 address) it soon cannot open a circuit to anyone, and
// neither can the members it reaches. Every other address keeps go-libp2p's
// defaults, restated here because they are unexported.
func relayConnLimits(relays []peer.AddrInfo) []rcmgr.Option {
	v4 := []rcmgr.NetworkPrefixLimit{{Network: netip.MustParsePrefix("127.0.0.0/8"), ConnCount: math.MaxInt}}
	v6 := []rcmgr.NetworkPrefixLimit{{Network: netip.MustParsePrefix("::1/128"), ConnCount: math.MaxInt}}
	rates := []rate.PrefixLimit{
		{Prefix: netip.MustParsePrefix("127.0.0.0/8")},
		{Prefix: netip.MustParsePrefix("::1/128")},
	}
	seen := map[netip.Addr]bool{}
	for _, r := range relays {
		for _, a := range r.Addrs {
			ip, err := manet.ToIP(a)
			if err != nil {
				continue
			}
			addr, ok := netip.AddrFromSlice(ip)
			if !ok || seen[addr.Unmap()] {
				continue
			}
			addr = addr.Unmap()
			seen[addr] = true
			p := netip.PrefixFrom(addr, addr.BitLen())
			if addr.Is4() {
				v4 = append(v4, rcmgr.NetworkPrefixLimit{Network: p, ConnCount: math.MaxInt})
			} else {
				v6 = append(v6, rcmgr.NetworkPrefixLimit{Network: p, ConnCount: math.MaxInt})
			}
			rates = append(rates, rate.PrefixLimit{Prefix: p}) // zero Limit: unlimited
		}
	}
	return []rcmgr.Option{
		rcmgr.WithNetworkPrefixLimit(v4, v6),
		rcmgr.WithConnRateLimiters(&rate.Limiter{
			NetworkPrefixLimits: rates,
			SubnetRateLimiter: rate.SubnetLimiter{
				IPv4SubnetLimits: []rate.SubnetLimit{{PrefixLength: 32, Limit: rate.Limit{RPS: 0.2, Burst: 16}}},
				IPv6SubnetLimits: []rate.SubnetLimit{
					{PrefixLength: 56, Limit: rate.Limit{RPS: 0.2, Burst: 16}},
					{PrefixLength: 48, Limit: rate.Limit{RPS: 0.5, Burst: 80}},
				},
				GracePeriod: time.Minute,
			},
		}),
	}
}
