package generations

import (
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pkey/p2pkey/generations/pb"
)

// Retention is the cluster-wide retention policy for absent members (the
// seed's open problem): see "Retention bound" in the package documentation.
type Retention struct {
	// MaxGenerationsBehind is the largest number of committed generations
	// a retained generation may be behind the current one. 1 to
	// MaxGenerationsBehindLimit.
	MaxGenerationsBehind uint32
	// LapseGrace is how long an active member's newest escrow outlives the
	// bound, counted from the commit of the first generation it missed:
	// 1 ms to MaxLapseGrace.
	LapseGrace time.Duration
}

// Retention returns the cluster's retention policy. A ledger bootstrapped
// before the policy existed (and an empty one) has the defaults,
// DefaultMaxGenerationsBehind and LapseGrace.
func (l *Ledger) Retention() Retention {
	return Retention{MaxGenerationsBehind: l.maxGenerationsBehind(), LapseGrace: time.Duration(l.lapseGrace())}
}

// lapseGrace is the cluster's lapse grace in nanoseconds.
func (l *Ledger) lapseGrace() int64 {
	if l.graceMs == 0 {
		return int64(LapseGrace)
	}
	return int64(l.graceMs) * int64(time.Millisecond)
}

func (l *Ledger) maxGenerationsBehind() uint32 {
	if l.maxBehind == 0 {
		return DefaultMaxGenerationsBehind
	}
	return l.maxBehind
}

// behind returns how many committed generations g is behind generation
// cur: the generations in (g, cur] that ever committed (committed or
// retired). Aborted generations do not count: no key was ever re-shared in
// them, so an absent member missed nothing there. Without aborts it is
// cur - g.
func (l *Ledger) behind(g, cur uint64) uint64 {
	var n uint64
	for i := g + 1; i <= cur && i <= uint64(len(l.gens)); i++ {
		if s := l.gens[i-1].state; s == StateCommitted || s == StateRetired {
			n++
		}
	}
	return n
}

// lapse is one member the retention bound takes out, and the retired
// generation that was its newest escrow.
type lapse struct {
	peer peer.ID
	gen  uint64
}

// boundPlan returns, without changing anything, what the retention bound
// maxBehind would do now: the committed generations older than the current
// one that are more than maxBehind committed generations behind it
// (ascending), and the active members whose newest escrow is one of them
// (sorted by peer ID). Nothing if there is no current generation.
//
// A generation that is some active member's newest escrow is kept, though
// the bound is exceeded, until LapseGrace has passed since the first
// generation that member missed committed: a member that is down for a
// restart while a burst of joins and removals commits must not lose its key
// for it (issue 12). The bound is applied again at the next commit or
// successful command after the grace with no generation open.
func (l *Ledger) boundPlan(now int64, maxBehind uint32) (retire []*generation, lapses []lapse) {
	cur := l.current()
	if cur == nil {
		return nil, nil
	}
	// Walk down from the current generation counting committed ones.
	var n uint64 // committed generations in (g, cur]
	for i := int(cur.num) - 1; i >= 1; i-- {
		if s := l.gens[i].state; s == StateCommitted || s == StateRetired {
			n++
		}
		g := l.gens[i-1]
		if g.state == StateCommitted && n > uint64(maxBehind) {
			retire = append(retire, g)
		}
	}
	if len(retire) == 0 {
		return nil, nil
	}
	slices.Reverse(retire)
	gone := make(map[uint64]bool, len(retire))
	for _, g := range retire {
		gone[g.num] = true
	}
	open := l.open() != nil
	for _, p := range sortedKeys(l.members) {
		if l.members[p].status != StatusActive {
			continue
		}
		// While a generation is open nothing lapses (a lapsed member must
		// never sit in an open generation): the bound only moves at a
		// commit, with nothing open, so a lapse found now is a grace that
		// ran out, and it waits for the open generation to end.
		if e := l.newestEscrow(p); gone[e] && (open || now-l.missedSince(e) < l.lapseGrace()) {
			delete(gone, e)
		}
	}
	retire = slices.DeleteFunc(retire, func(g *generation) bool { return !gone[g.num] })
	if len(retire) == 0 {
		return nil, nil
	}
	for _, p := range sortedKeys(l.members) {
		if l.members[p].status != StatusActive {
			continue
		}
		if e := l.newestEscrow(p); gone[e] {
			lapses = append(lapses, lapse{peer: p, gen: e})
		}
	}
	return retire, lapses
}

// missedSince returns when the first generation committed after g did: the
// moment a member whose newest escrow is g started to fall behind.
func (l *Ledger) missedSince(g uint64) int64 {
	for i := g + 1; i <= uint64(len(l.gens)); i++ {
		if s := l.gens[i-1].state; s == StateCommitted || s == StateRetired {
			return l.gens[i-1].committedAt
		}
	}
	return 0
}

// applyBound retires what the retention bound requires and lapses the
// members whose newest escrow went with it.
func (l *Ledger) applyBound(now int64, res *Result) {
	k := l.maxGenerationsBehind()
	retire, lapses := l.boundPlan(now, k)
	for _, g := range retire {
		l.retire(now, g)
		res.Retired = append(res.Retired, g.num)
	}
	for _, lp := range lapses {
		l.lapse(now, lp, k)
		res.Lapsed = append(res.Lapsed, lp.peer)
	}
}

// lapse makes an active member lapsed: it is in no new generation, it can
// record no receipt, its key-check value is dropped (it may come back with
// a new K), and every receipt where it is the owner is deleted, so no holder
// may serve its envelopes. Receipts where it is the holder are kept: it is
// not distrusted, it really holds those envelopes, and deleting them could
// take another active member below its threshold in every retained
// generation, which is what G4 forbids.
func (l *Ledger) lapse(now int64, lp lapse, maxBehind uint32) {
	m := l.setStatus(lp.peer, MemberLapse)
	m.lapsedAt, m.lapsedGen, m.lapsedThrough = now, lp.gen, uint64(len(l.gens))
	m.reason = fmt.Sprintf("lapsed: its newest escrowed generation %d was retired by the retention bound (max %d generations behind)", lp.gen, maxBehind)
	delete(l.keyChecks, lp.peer)
	for _, g := range l.gens {
		delete(g.receipts, lp.peer)
	}
}

func (l *Ledger) setRetention(now int64, c *pb.SetRetention) (Result, error) {
	by := peer.ID(c.GetBy())
	if err := l.activeErr(by); err != nil {
		return Result{}, err
	}
	k, old := c.GetMaxGenerationsBehind(), l.maxGenerationsBehind()
	if k < old {
		// Lowering the bound can lapse members. A lapsed member must never
		// sit in an open generation (it could neither escrow in it nor be
		// carried into it), so lowering waits for the open one to end.
		if g := l.open(); g != nil {
			return Result{}, fmt.Errorf("%w: generation %d; lowering the retention bound waits for it to commit or abort", ErrGenerationOpen, g.num)
		}
		if _, lapses := l.boundPlan(now, k); len(lapses) > 0 && len(lapses) >= l.countActive() {
			return Result{}, fmt.Errorf("%w: a bound of %d would lapse every active member", ErrLastMember, k)
		}
	}
	l.maxBehind = k
	var res Result
	l.retireEligible(now, &res)
	return res, nil
}
