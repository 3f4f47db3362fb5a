package p2p

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	ma "github.com/multiformats/go-multiaddr"
)

// Connection types reported by ConnType.
const (
	ConnDirect      = "direct"
	ConnHolePunched = "hole-punched"
	ConnRelayed     = "relayed"
	ConnNone        = "none"
)

// Reachability values reported by Reachability.
const (
	ReachPublic  = "public"
	ReachPrivate = "private"
	ReachUnknown = "unknown"
)

// natHost is the host New returns: the libp2p host plus the NAT state this
// package keeps about it (hole punches, reachability, relay upgrades). It
// embeds host.Host, so callers see an ordinary host.
type natHost struct {
	host.Host
	nat *natState
}

// Close stops the NAT bookkeeping, then the host.
func (h *natHost) Close() error {
	h.nat.close()
	return h.Host.Close()
}

// natState is the per-host bookkeeping behind ConnType, Reachability and
// WithAddrsChanged.
type natState struct {
	punches *punchTracker
	reach   atomic.Int32 // a network.Reachability

	ctx    context.Context
	cancel context.CancelFunc
	h      host.Host
	notif  *network.NotifyBundle

	mu     sync.Mutex // guards closed, subs and wg.Add
	closed bool
	subs   []event.Subscription
	wg     sync.WaitGroup
}

// spawn runs fn on a goroutine that close waits for, unless s is closed.
func (s *natState) spawn(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}

func newNATState(tr *punchTracker) *natState {
	ctx, cancel := context.WithCancel(context.Background())
	return &natState{punches: tr, ctx: ctx, cancel: cancel}
}

// start subscribes to the host's events. It runs once, right after the host
// is built and before it is returned to anyone.
func (s *natState) start(h host.Host, o *options) error {
	s.h = h
	s.punches.attach(h)

	// Reachability comes from AutoNAT v1 (one verdict for the host) and
	// AutoNAT v2 (per address). In a small cluster v1 often cannot decide
	// for the public node: its peers are behind NAT, advertise no public
	// address, and v1 skips such peers as probers. v2 asks any connected
	// peer, so an address v2 confirmed reachable also counts as public.
	reach, err := h.EventBus().Subscribe([]any{new(event.EvtLocalReachabilityChanged), new(event.EvtHostReachableAddrsChanged)},
		eventbus.Name("p2pkey reachability"))
	if err != nil {
		return err
	}
	s.subs = append(s.subs, reach)
	var relay *relayService
	if o.relayMember != nil {
		relay = &relayService{h: h, isMember: o.relayMember}
	}
	s.spawn(func() {
		defer relay.stop()
		v1, v2 := network.ReachabilityUnknown, network.ReachabilityUnknown
		for e := range reach.Out() {
			switch ev := e.(type) {
			case event.EvtLocalReachabilityChanged:
				v1 = ev.Reachability
			case event.EvtHostReachableAddrsChanged:
				switch {
				case len(ev.Reachable) > 0:
					v2 = network.ReachabilityPublic
				case len(ev.Unreachable) > 0:
					v2 = network.ReachabilityPrivate
				default:
					v2 = network.ReachabilityUnknown
				}
			}
			r := combineReachability(v1, v2)
			if network.Reachability(s.reach.Swap(int32(r))) != r {
				log.Infow("reachability changed", "peer", h.ID(), "reachability", reachString(r))
			}
			if r == network.ReachabilityPublic {
				relay.start()
			} else {
				relay.stop()
			}
		}
	})

	if o.addrsChanged != nil {
		addrs, err := h.EventBus().Subscribe(new(event.EvtLocalAddressesUpdated), eventbus.Name("p2pkey addrs changed"))
		if err != nil {
			s.close()
			return err
		}
		s.subs = append(s.subs, addrs)
		s.spawn(func() {
			for e := range addrs.Out() {
				if ev := e.(event.EvtLocalAddressesUpdated); ev.Diffs {
					log.Debugw("local addresses changed", "peer", h.ID(), "addrs", h.Addrs())
					o.addrsChanged()
				}
			}
		})
	}

	s.notif = &network.NotifyBundle{
		ConnectedF: func(_ network.Network, c network.Conn) {
			if o.upgradeGrace >= 0 && !isRelayedConn(c) {
				s.scheduleUpgrade(c.RemotePeer(), o.upgradeGrace)
			}
		},
		DisconnectedF: func(_ network.Network, c network.Conn) { s.punches.forget(c) },
	}
	h.Network().Notify(s.notif)

	if len(o.staticRelays) > 0 && o.reachability == network.ReachabilityUnknown {
		// AutoRelay starts looking for relays only on an
		// EvtLocalReachabilityChanged, and AutoNAT v1 stays silent on a host
		// with no public address candidate: a host behind NAT in a small
		// cluster never has one, because an observed address needs several
		// distinct observers. Announce the true initial state, "unknown", so
		// AutoRelay reserves a slot on the static relays right away.
		em, err := h.EventBus().Emitter(new(event.EvtLocalReachabilityChanged), eventbus.Stateful)
		if err != nil {
			s.close()
			return err
		}
		err = em.Emit(event.EvtLocalReachabilityChanged{Reachability: network.ReachabilityUnknown})
		em.Close()
		if err != nil {
			s.close()
			return err
		}
	}
	return nil
}

// scheduleUpgrade closes p's relayed connections once a direct one has been
// open for grace, so that long-lived streams (Raft's) reopen on the direct
// connection instead of staying on the relay forever.
func (s *natState) scheduleUpgrade(p peer.ID, grace time.Duration) {
	s.spawn(func() {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		conns := s.h.Network().ConnsToPeer(p)
		direct := false
		for _, c := range conns {
			if !isRelayedConn(c) && !c.IsClosed() {
				direct = true
			}
		}
		if !direct {
			return
		}
		for _, c := range conns {
			if isRelayedConn(c) {
				log.Debugw("closing relayed connection: a direct one exists", "peer", p)
				_ = c.Close()
			}
		}
	})
}

func (s *natState) close() {
	s.cancel()
	if s.h != nil && s.notif != nil {
		s.h.Network().StopNotify(s.notif)
	}
	s.mu.Lock()
	s.closed = true
	subs := s.subs
	s.subs = nil
	s.mu.Unlock()
	for _, sub := range subs {
		sub.Close()
	}
	s.wg.Wait()
}

// stateOf returns the NAT state of a host made by New, or nil.
func stateOf(h host.Host) *natState {
	if nh, ok := h.(*natHost); ok {
		return nh.nat
	}
	return nil
}

// ConnType says how h is connected to p: "hole-punched" when its direct
// connections were all opened by a DCUtR hole punch, "direct" when it has any
// other direct connection, "relayed" when it only has connections through a
// circuit relay, and "none". A host not made by New never reports
// "hole-punched".
func ConnType(h host.Host, p peer.ID) string {
	st := stateOf(h)
	var direct, punched, relayed bool
	for _, c := range h.Network().ConnsToPeer(p) {
		if c.IsClosed() {
			continue
		}
		switch {
		case isRelayedConn(c):
			relayed = true
		case st != nil && st.punches.punched(c):
			punched = true
		default:
			direct = true
		}
	}
	switch {
	case direct:
		return ConnDirect
	case punched:
		return ConnHolePunched
	case relayed:
		return ConnRelayed
	}
	return ConnNone
}

// ConnCounts counts a host's open connections by how they were made.
type ConnCounts struct {
	// Direct counts direct connections that no hole punch opened.
	Direct int
	// HolePunched counts direct connections opened by a DCUtR hole punch.
	HolePunched int
	// Relayed counts connections through a circuit relay.
	Relayed int
}

// CountConns counts h's open connections, to every peer, by type (the same
// classification as ConnType, per connection). A host not made by New
// counts no hole-punched connection.
func CountConns(h host.Host) ConnCounts {
	st := stateOf(h)
	var n ConnCounts
	for _, c := range h.Network().Conns() {
		if c.IsClosed() {
			continue
		}
		switch {
		case isRelayedConn(c):
			n.Relayed++
		case st != nil && st.punches.punched(c):
			n.HolePunched++
		default:
			n.Direct++
		}
	}
	return n
}

// Reachability is h's reachability as AutoNAT last reported it: "public",
// "private" or "unknown". A host not made by New is always "unknown".
func Reachability(h host.Host) string {
	st := stateOf(h)
	if st == nil {
		return ReachUnknown
	}
	return reachString(network.Reachability(st.reach.Load()))
}

// combineReachability merges AutoNAT v1's verdict with v2's: public if
// either says so, private if either says so and neither says public.
func combineReachability(v1, v2 network.Reachability) network.Reachability {
	switch {
	case v1 == network.ReachabilityPublic || v2 == network.ReachabilityPublic:
		return network.ReachabilityPublic
	case v1 == network.ReachabilityPrivate || v2 == network.ReachabilityPrivate:
		return network.ReachabilityPrivate
	}
	return network.ReachabilityUnknown
}

func reachString(r network.Reachability) string {
	switch r {
	case network.ReachabilityPublic:
		return ReachPublic
	case network.ReachabilityPrivate:
		return ReachPrivate
	}
	return ReachUnknown
}

func isRelayedConn(c network.Conn) bool { return isCircuitAddr(c.RemoteMultiaddr()) }

func isCircuitAddr(a ma.Multiaddr) bool {
	if a == nil {
		return false
	}
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// punchTracker is a holepunch.EventTracer that remembers which direct
// connections were opened by a successful hole punch.
//
// DCUtR reports "EndHolePunch, success" on both sides, right after the
// simultaneous connect returns, but not which connection it made. A punch
// only starts from a relayed connection while there is no direct one, so the
// direct connections to that peer opened since the punch began are the
// punched ones. "Began" is the StartHolePunch time less one round trip: the
// other side's dial can land up to half a round trip before this side starts
// its own. Entries are dropped when their connection closes.
type punchTracker struct {
	h atomic.Pointer[host.Host]

	mu     sync.Mutex
	starts map[peer.ID]time.Time // when the last punch with a peer began
	conns  map[string]peer.ID    // conn ID → peer, for punched conns
}

func newPunchTracker() *punchTracker {
	return &punchTracker{starts: map[peer.ID]time.Time{}, conns: map[string]peer.ID{}}
}

func (t *punchTracker) attach(h host.Host) { t.h.Store(&h) }

// Trace implements holepunch.EventTracer.
func (t *punchTracker) Trace(evt *holepunch.Event) {
	switch e := evt.Evt.(type) {
	case *holepunch.StartHolePunchEvt:
		t.mu.Lock()
		t.starts[evt.Remote] = time.Unix(0, evt.Timestamp).Add(-e.RTT)
		t.mu.Unlock()
	case *holepunch.EndHolePunchEvt:
		if !e.Success {
			log.Debugw("hole punch failed", "peer", evt.Remote, "err", e.Error)
			return
		}
		log.Infow("hole punch succeeded", "peer", evt.Remote, "took", e.EllapsedTime)
		t.record(evt.Remote, time.Unix(0, evt.Timestamp).Add(-e.EllapsedTime))
	}
}

func (t *punchTracker) record(p peer.ID, began time.Time) {
	hp := t.h.Load()
	if hp == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.starts[p]; ok && s.Before(began) {
		began = s
	}
	delete(t.starts, p)
	for _, c := range (*hp).Network().ConnsToPeer(p) {
		if !isRelayedConn(c) && !c.Stat().Opened.Before(began) {
			t.conns[c.ID()] = p
		}
	}
}

func (t *punchTracker) punched(c network.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.conns[c.ID()]
	return ok
}

func (t *punchTracker) forget(c network.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.conns, c.ID())
}
