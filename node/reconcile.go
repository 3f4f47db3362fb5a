package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/p2p"
)

const (
	// reconcileBusy is how soon the reconciler looks again while a pass
	// left work in hand (an open generation, a failed change).
	reconcileBusy = 500 * time.Millisecond
	// connectInterval is the first retry of a member that could not be
	// dialled; retries double up to connectMaxBackoff.
	connectInterval   = 2 * time.Second
	connectMaxBackoff = 30 * time.Second
	// upgradeRounds is how many steady rounds relayed-only members get (two
	// minutes) before their retries back off like any other.
	upgradeRounds     = 60
	membershipTimeout = 10 * time.Second
)

func (n *Node) pokeReconciler() { n.onApplied(0) }

// pokeKeys wakes the key loop.
func (n *Node) pokeKeys() {
	select {
	case n.keyPoke <- struct{}{}:
	default:
	}
}

// reconcileLoop runs on every node and acts only on the leader. It keeps the
// Raft configuration in step with the ledger (the ledger is the truth):
// active and joining members are servers; active members are promoted to
// voters once connected; removed and rejected members are taken out. It also
// aborts an open generation whose deadline has passed (rule G3). Each pass is
// idempotent, so a new leader simply carries on.
//
// It runs on ledger changes, leader changes and connection events; a timer
// is armed only while a pass left work that no event announces (an open
// generation's deadline, a failed membership change, a joiner held back).
func (n *Node) reconcileLoop() {
	defer n.wg.Done()
	n.onChange(func() time.Duration {
		if !n.cons.IsLeader() {
			return safetyNet
		}
		if n.reconcile() {
			return reconcileBusy
		}
		return safetyNet
	})
}

// reconcile makes one pass and reports whether work remains that no event
// will announce.
func (n *Node) reconcile() (busy bool) {
	// A new leader's ledger may lag what the cluster committed (after a
	// cold restart it may be empty). Acting on it could take live members
	// out of Raft, so first apply everything committed: a barrier, once
	// per term.
	if term := n.cons.RaftState().Term; term != n.barrierTerm {
		if err := n.cons.Barrier(5 * time.Second); err != nil {
			log.Debugw("reconcile: barrier", "err", err)
			return true
		}
		n.barrierTerm = term
	}
	var members []generations.Member
	var bootstrapped, hasOpen bool
	var open generations.Generation
	n.view(func(l *generations.Ledger) {
		bootstrapped = l.Bootstrapped()
		members = l.Members()
		open, hasOpen = l.Open()
	})
	if !bootstrapped {
		return false
	}
	// An open generation has deadlines no event announces (its own, the
	// joiners' progress timeout, a joiner held back from Raft).
	busy = hasOpen
	servers := map[peer.ID]bool{} // id -> voter
	for _, s := range n.cons.Servers() {
		servers[s.ID] = s.Voter
	}
	want := map[peer.ID]bool{}
	gone := map[peer.ID]bool{} // removed, rejected or lapsed: safe to drop
	for _, m := range members {
		switch m.Status {
		case generations.StatusRemoved, generations.StatusRejected, generations.StatusLapsed:
			gone[m.ID] = true
		}
		switch m.Status {
		case generations.StatusActive, generations.StatusJoining:
			want[m.ID] = true
			voter, in := servers[m.ID]
			if !in && m.Status == generations.StatusJoining && deferJoiner(open, hasOpen, m.ID, n.now()) {
				continue
			}
			if !in {
				if err := n.cons.AddNonvoter(m.ID, membershipTimeout); err != nil {
					log.Warnw("add non-voter", "peer", m.ID, "err", err)
					busy = true
					continue
				}
				log.Infow("added non-voter", "peer", m.ID)
			} else if !voter && m.Status == generations.StatusActive && n.connected(m.ID) {
				if err := n.cons.AddVoter(m.ID, membershipTimeout); err != nil {
					log.Warnw("promote to voter", "peer", m.ID, "err", err)
					busy = true
					continue
				}
				log.Infow("promoted to voter", "peer", m.ID)
			}
		}
	}
	for id := range servers {
		if want[id] {
			continue
		}
		if !gone[id] {
			// A server the ledger does not know: never drop it on the
			// strength of a ledger that may simply be behind.
			log.Warnw("server in the Raft configuration is unknown to the ledger; leaving it", "peer", id)
			continue
		}
		if err := n.cons.RemoveServer(id, membershipTimeout); err != nil {
			log.Warnw("remove server", "peer", id, "err", err)
			busy = true
			continue
		}
		log.Infow("removed from the Raft configuration", "peer", id)
	}
	n.abortExpired()
	n.openIfNeeded()
	return busy
}

// joinerRaftDelay is how long a joiner of the open generation waits to be
// added to Raft (see deferJoiner).
const joinerRaftDelay = 500 * time.Millisecond

// deferJoiner reports whether joiner, a joiner of the open generation,
// should not be added to Raft yet. Its join response told it the generation,
// so it shares without a ledger; sending it the whole log now would compete
// for every member's disk and CPU with the generation itself. It is added
// once the generation is decided, or when it has been open for
// joinerRaftDelay (or half its time to the deadline, if shorter), so a
// generation that aborts still reaches the joiner with what it lacked.
func deferJoiner(open generations.Generation, hasOpen bool, joiner peer.ID, now time.Time) bool {
	if !hasOpen || !slices.Contains(open.Joiners, joiner) {
		return false
	}
	wait := joinerRaftDelay
	if half := open.Deadline.Sub(open.OpenedAt) / 2; !open.Deadline.IsZero() && half < wait {
		wait = half
	}
	return now.Before(open.OpenedAt.Add(wait))
}

// openIfNeeded opens a generation when joiners are waiting for one (they
// arrived while another was open, rule G2) or when the cluster has none at
// all (a crash between bootstrap and the first generation).
func (n *Node) openIfNeeded() {
	var need bool
	n.view(func(l *generations.Ledger) {
		if _, open := l.Open(); open {
			return
		}
		_, cur := l.Current()
		// No generation of fewer than 2 members is ever opened (rule K1).
		need = (len(l.PendingJoiners()) > 0 || !cur) && len(l.Active())+len(l.Joining()) >= 2
	})
	if !need {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, membershipTimeout)
	defer cancel()
	now := n.now()
	if err := n.apply(ctx, generations.NewOpenGeneration(now.Add(n.cfg.GenerationTimeout), now)); err != nil {
		log.Debugw("open generation", "err", err)
	}
}

// abortExpired aborts the open generation once its deadline has passed
// (rule G3), or earlier once one of its joiners has recorded nothing for
// generations.JoinProgressTimeout: the joiner is gone, and a join must not
// wedge every other join behind it for the whole deadline.
func (n *Node) abortExpired() {
	var gen uint64
	var why string
	n.view(func(l *generations.Ledger) {
		g, ok := l.Open()
		if !ok {
			return
		}
		now := l.Now() // the leader's clock, as the ledger will see it
		if wall := n.now(); wall.After(now) {
			now = wall
		}
		if !g.Deadline.IsZero() && now.After(g.Deadline) {
			gen, why = g.Number, "its deadline passed"
			return
		}
		if now.Sub(g.OpenedAt) < generations.JoinProgressTimeout {
			return
		}
		for _, j := range g.Joiners {
			if c := l.Coverage(j); c.Open != nil && c.Open.Held == 0 {
				gen, why = g.Number, fmt.Sprintf("joiner %s recorded no share in %s", j, generations.JoinProgressTimeout)
				return
			}
		}
	})
	if gen == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, membershipTimeout)
	defer cancel()
	if err := n.apply(ctx, generations.NewAbortGeneration(gen, n.now())); err != nil {
		log.Warnw("abort generation", "generation", gen, "why", why, "err", err)
		return
	}
	log.Infow("aborted generation", "generation", gen, "why", why)
}

func (n *Node) connected(p peer.ID) bool {
	return p == n.host.ID() || n.host.Network().Connectedness(p) == network.Connected
}

// connectLoop keeps a connection open to every live member, using the
// addresses in the ledger and the local peer book.
//
// It runs on ledger and connection changes; while a member stays
// unreachable it retries after connectInterval, doubling up to
// connectMaxBackoff. A member reached only through a relay is dialled at a
// steady connectInterval for upgradeRounds rounds after the set of such
// members last changed: the upgrade to a hole-punched or direct connection
// takes a few rounds in which both sides dial, which a doubling backoff
// would space out.
func (n *Node) connectLoop() {
	defer n.wg.Done()
	backoff := connectInterval
	var upgrades, lastRelayed int
	n.onChange(func() time.Duration {
		ok, relayed := n.connectMembers(slices.Contains(holePunchRounds, upgrades))
		if relayed != lastRelayed {
			upgrades, lastRelayed = 0, relayed
		}
		if relayed > 0 && upgrades < upgradeRounds {
			upgrades++
			return connectInterval
		}
		if ok {
			backoff = connectInterval
			return safetyNet
		}
		wait := backoff
		backoff = min(2*backoff, connectMaxBackoff)
		return wait
	})
}

// addMemberAddrs puts what the ledger says of m's addresses into the
// peerstore, with circuit addresses through the known relays so a member is
// reachable through a relay before it has announced its relayed address
// (rule N1).
func (n *Node) addMemberAddrs(m generations.Member) {
	n.addAddrs(m.ID, m.Addrs)
	if len(n.relays) > 0 {
		n.host.Peerstore().AddAddrs(m.ID, p2p.CircuitAddrs(n.relays, m.ID), time.Hour)
	}
}

// learnAddrs readies the peerstore to dial member p now, rather than at the
// next connect round: a joiner's addresses arrive in the ledger with the
// generation that is opened for it.
func (n *Node) learnAddrs(p peer.ID) {
	if n.connected(p) {
		return
	}
	var m generations.Member
	var ok bool
	n.view(func(l *generations.Ledger) { m, ok = l.Member(p) })
	if ok {
		n.addMemberAddrs(m)
	}
}

// holePunchRounds are the rounds of the upgrade window (counted from the
// last change in the set of relayed-only members) in which a member reached
// only through a relay is reconnected through it, to try hole punching again
// (see reRelay): about 6 s, 20 s and 50 s in.
var holePunchRounds = []int{3, 10, 25}

// connectMembers dials every live member not connected directly, and
// reports whether all of them are connected now and how many it reaches only
// through a relay. With punch set, it also reconnects through the relay the
// relayed-only members whose peer ID sorts after its own (reRelay).
func (n *Node) connectMembers(punch bool) (ok bool, relayedOnly int) {
	var members []generations.Member
	n.view(func(l *generations.Ledger) { members = l.Members() })
	var wg sync.WaitGroup
	var failed atomic.Bool
	for _, m := range members {
		if m.ID == n.host.ID() {
			continue
		}
		if m.Status == generations.StatusRemoved || m.Status == generations.StatusRejected {
			p2p.Unprotect(n.host, m.ID)
			continue
		}
		p2p.Protect(n.host, m.ID)
		n.addMemberAddrs(m)
		if n.connected(m.ID) {
			continue
		}
		if n.host.Network().Connectedness(m.ID) == network.Limited {
			relayedOnly++
			if punch && n.host.ID() < m.ID {
				wg.Add(1)
				go func(id peer.ID) {
					defer wg.Done()
					n.reRelay(id)
				}(m.ID)
			}
			// A dial would return the relayed connection it already has.
			continue
		}
		wg.Add(1)
		go func(id peer.ID) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
			defer cancel()
			if err := n.host.Connect(ctx, peer.AddrInfo{ID: id}); err != nil {
				log.Debugw("connect to member", "peer", id, "err", err)
				failed.Store(true)
			}
		}(m.ID)
	}
	wg.Wait()
	return !failed.Load(), relayedOnly
}

// reRelay closes this node's relayed connections to member p and connects
// to it through the relay again. Hole punching (DCUtR) is tried only when a
// relayed connection comes in, by its receiver, and it fails when it runs
// before both sides have learnt their public addresses from enough peers
// (soon after a start); libp2p never tries again on its own. A fresh relayed
// connection makes p's node try it once more, now that both know their
// addresses. Only one side of a pair does it (the lower peer ID), so that
// the two do not close each other's new connections.
func (n *Node) reRelay(p peer.ID) {
	for _, c := range n.host.Network().ConnsToPeer(p) {
		if c.Stat().Limited {
			_ = c.Close()
		}
	}
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer cancel()
	err := n.host.Connect(network.WithAllowLimitedConn(ctx, "p2pkey-holepunch"), peer.AddrInfo{ID: p})
	log.Debugw("reconnected through the relay to retry hole punching", "peer", p, "err", err)
}

// announceAddrsLoop records this node's addresses in the ledger whenever they
// differ from what it holds, so restarted members and invites can find it.
func (n *Node) announceAddrsLoop() {
	defer n.wg.Done()
	// A node whose addresses changed (a restart on another port) must get
	// them into the ledger soon, or members that know only the old ones
	// cannot reach it: retry a failed announcement after 1 s, doubling up
	// to the 30 s safety net.
	retry := time.Second
	for {
		wait := 30 * time.Second
		if !n.announceAddrs() {
			wait, retry = retry, min(2*retry, 30*time.Second)
		} else {
			retry = time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-n.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-n.addrsCh:
			t.Stop()
		}
	}
}

// announceAddrs records this node's addresses in the ledger if they
// changed; it reports false when they are still to be recorded.
func (n *Node) announceAddrs() bool {
	mine := p2p.AddrInfoStrings(n.host)
	if len(mine) > generations.MaxAddrs {
		mine = mine[:generations.MaxAddrs]
	}
	var recorded []string
	var member bool
	n.view(func(l *generations.Ledger) {
		if m, ok := l.Member(n.host.ID()); ok && m.Status.IsMember() {
			member, recorded = true, m.Addrs
		}
	})
	if !member || slices.Equal(sortedCopy(mine), sortedCopy(recorded)) {
		return true
	}
	ctx, cancel := context.WithTimeout(n.ctx, membershipTimeout)
	defer cancel()
	if err := n.apply(ctx, generations.NewSetAddrs(n.host.ID(), mine, n.now())); err != nil {
		log.Debugw("record addresses", "err", err)
		return false
	}
	return true
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// watchLoop turns ledger and leadership changes into events.
func (n *Node) watchLoop() {
	defer n.wg.Done()
	var leader peer.ID
	statuses := map[peer.ID]generations.MemberStatus{}
	genStates := map[uint64]generations.GenerationState{}
	first := true
	// Waits on what it reports: the ledger applying a command, Raft
	// changing leader (issue 13: an idle node does not poll).
	n.onChange(func() time.Duration {
		if l := n.cons.Leader(); l != leader {
			leader = l
			n.events.publish(Event{Type: EventLeaderChanged, Peer: l})
		}
		var members []generations.Member
		var gens []generations.Generation
		n.view(func(l *generations.Ledger) { members, gens = l.Members(), l.Generations() })
		for _, g := range gens {
			old, seen := genStates[g.Number]
			genStates[g.Number] = g.State
			if first || (seen && old == g.State) {
				continue
			}
			// A generation can open and commit between two polls: report
			// the opening anyway, then where it went.
			if !seen {
				n.events.publish(Event{Type: EventGenerationOpen, Detail: fmt.Sprintf("generation %d: %d members, threshold %d", g.Number, len(g.Members), g.Threshold)})
			}
			if g.State != generations.StateOpen {
				n.events.publish(Event{Type: EventGenerationDone, Detail: fmt.Sprintf("generation %d %s", g.Number, g.State)})
			}
		}
		for _, m := range members {
			old, seen := statuses[m.ID]
			statuses[m.ID] = m.Status
			switch {
			case first:
			case !seen:
				n.events.publish(Event{Type: EventMemberAdded, Peer: m.ID, Detail: m.Status.String()})
			case old != m.Status && m.Status == generations.StatusRemoved:
				// Revoke at once (R1): pooled Raft streams from the removed
				// peer would otherwise outlive the S1 gate's check.
				n.cons.ResetStreams(m.ID)
				n.events.publish(Event{Type: EventMemberRemoved, Peer: m.ID})
			case old != m.Status:
				n.events.publish(Event{Type: EventMemberChanged, Peer: m.ID, Detail: m.Status.String()})
			}
		}
		first = false
		n.savePeerBookIfChanged(members)
		return safetyNet
	})
}

// The peer book keeps members' addresses on local disk, so a restarted node
// can reach its cluster before its ledger has caught up.
type peerBook struct {
	Version int                 `json:"version"`
	Peers   map[string][]string `json:"peers"`
}

func (n *Node) loadPeerBook() {
	data, err := os.ReadFile(n.cfg.peersPath())
	if err != nil {
		return
	}
	var pb peerBook
	if err := json.Unmarshal(data, &pb); err != nil || pb.Version != 1 {
		log.Warnw("ignoring unreadable peer book", "path", n.cfg.peersPath())
		return
	}
	for s, addrs := range pb.Peers {
		id, err := peer.Decode(s)
		if err != nil || id == n.host.ID() {
			continue
		}
		n.addAddrs(id, addrs)
		p2p.Protect(n.host, id)
		go func() {
			ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
			defer cancel()
			_ = n.host.Connect(ctx, peer.AddrInfo{ID: id})
		}()
	}
}

func (n *Node) savePeerBookIfChanged(members []generations.Member) {
	book := peerBook{Version: 1, Peers: map[string][]string{}}
	for _, m := range members {
		if m.ID == n.host.ID() || m.Status == generations.StatusRemoved || m.Status == generations.StatusRejected {
			continue
		}
		// What the peer told us it listens on now (identify) comes first,
		// then what the ledger recorded: a member that moved and could
		// not record its new addresses yet (no quorum) stays reachable.
		var addrs []string
		for _, a := range n.host.Peerstore().Addrs(m.ID) {
			addrs = append(addrs, a.String())
		}
		slices.Sort(addrs) // a stable book is written only when it changes
		for _, a := range m.Addrs {
			if !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
		book.Peers[m.ID.String()] = addrs
	}
	data, _ := json.MarshalIndent(book, "", "  ")
	n.bookMu.Lock()
	defer n.bookMu.Unlock()
	if string(n.lastBook) == string(data) {
		return
	}
	if err := writeFileAtomic(n.cfg.peersPath(), data, 0o600); err != nil {
		log.Warnw("save peer book", "err", err)
		return
	}
	n.lastBook = data
}

func (n *Node) savePeerBook() {
	var members []generations.Member
	n.view(func(l *generations.Ledger) { members = l.Members() })
	n.bookMu.Lock()
	n.lastBook = nil
	n.bookMu.Unlock()
	n.savePeerBookIfChanged(members)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
