package node

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	gpb "github.com/p2pkey/p2pkey/generations/pb"
	"github.com/p2pkey/p2pkey/p2p"
	"github.com/p2pkey/p2pkey/shares"
)

// escrowState is what the escrow fan-out remembers between passes.
type escrowState struct {
	mu sync.Mutex
	// openSeen is when standBy first saw a generation open.
	openSeen map[uint64]time.Time
}

// reshareIfNoMargin opens a generation when this node is escrowed in the
// current generation with exactly its threshold of shares and can no longer
// add any (it restarted after the commit, before topping its holders up, so
// the split is gone; mixing in a new split is never allowed). With no
// margin, one holder down would lock it out: "escrowed" must mean
// recoverable under a fault, so the cluster re-shares. Once per process.
//
// It decides on a ledger confirmed current (a read index, Fresh), not on
// caughtUp: a node that has just restarted and unlocked from its hint can
// hold a ledger still short of the leader's (Raft counts entries applied
// once handed to the state machine, and a follower's commit index stops at
// its own last entry), in which its escrow of a generation long since
// superseded looks like one without margin. Re-sharing on such a view cost
// every member a generation per restart (issue 13: in BenchmarkUnlock each
// one made the next restart wait on exactly t holders while 15 owners
// re-shared).
func (n *Node) reshareIfNoMargin(cov generations.Coverage, d generations.Duties) {
	gen, ok := n.noMargin(cov, d)
	if !ok {
		return
	}
	// Only an escrow made by an earlier process (this one never split K
	// for gen), and at most once per process: a re-share can never feed
	// another.
	n.keys.mu.Lock()
	made := n.keys.made[gen] != (generations.SplitID{})
	n.keys.mu.Unlock()
	if made || n.reshared.Load() != 0 {
		return
	}
	fctx, fcancel := context.WithTimeout(n.ctx, freshWait)
	err := n.cons.Fresh(fctx)
	fcancel()
	if err != nil {
		log.Debugw("escrow margin: the ledger is not confirmed current; deciding later", "err", err)
		return
	}
	self := n.host.ID()
	n.view(func(l *generations.Ledger) { cov, d = l.Coverage(self), l.Duties(self) })
	if again, ok := n.noMargin(cov, d); !ok || again != gen || !n.reshared.CompareAndSwap(0, gen) {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer cancel()
	now := n.now()
	if err := n.apply(ctx, generations.NewOpenGeneration(now.Add(n.cfg.GenerationTimeout), now)); err != nil {
		n.reshared.Store(0) // not done: the next pass tries again
		log.Infow("could not open a generation to restore this node's escrow margin", "generation", gen, "err", err)
		return
	}
	log.Infow("opened a generation: this node's escrow had no margin (it restarted before topping its holders up)", "generation", gen, "held", cov.SharesHeld, "threshold", cov.Threshold)
}

// noMargin reports the current generation when this node's ledger shows it
// escrowed there with exactly its threshold, fewer than every member, and
// no generation open.
func (n *Node) noMargin(cov generations.Coverage, d generations.Duties) (uint64, bool) {
	if d.Open != 0 || cov.Generation == 0 || cov.SharesHeld > cov.Threshold {
		return 0, false
	}
	var cur generations.Generation
	var ok bool
	n.view(func(l *generations.Ledger) { cur, ok = l.Current() })
	if !ok || cur.Number != cov.Generation || cov.SharesHeld >= len(cur.Members) {
		return 0, false
	}
	return cur.Number, true
}

// distribute splits K for generation gen (once per process), seals one
// envelope per holder, pushes them in parallel, and records the receipts.
//
// While gen is open, it pushes in rounds and stops once the generation's
// commit no longer waits on this owner: t(g) holders have its share, every
// joiner among them (rules J2-J3). The other holders get theirs once the
// generation has committed (see missingCurrentHolders), so a join does not
// pay for every member's disk writes before it can commit. A holder that
// fails is replaced at once by the next.
func (n *Node) distribute(clusterID string, k []byte, gen uint64, holders []peer.ID) {
	var g generations.Generation
	var ok bool
	n.view(func(l *generations.Ledger) { g, ok = l.Generation(gen) })
	// apply waits for this node's ledger to apply what it records; a
	// joiner that shares before its ledger exists only waits for the leader.
	apply := n.apply
	if !ok {
		jg := n.joinGen.Load()
		if jg == nil || jg.Number != gen {
			return
		}
		g = jg.generation()
		apply = func(ctx context.Context, cmd *gpb.Command) error {
			_, err := n.applyResult(ctx, cmd)
			return err
		}
	}
	n.keys.mu.Lock()
	hasSplit := n.keys.splits[g.Number] != nil
	n.keys.mu.Unlock()
	if !hasSplit && ok {
		// A new split is decided on a ledger confirmed current: a node that
		// restarted (a cold restart of the whole cluster above all) may
		// replay a ledger that does not yet show the escrow its earlier
		// process made in g, and splitting again then would replace what
		// the cluster counts (issue 12).
		fctx, fcancel := context.WithTimeout(n.ctx, freshWait)
		err := n.cons.Fresh(fctx)
		fcancel()
		if err != nil {
			log.Debugw("not splitting yet: the ledger is not confirmed current", "generation", gen, "err", err)
			return
		}
	}
	sp, envs := n.sealFor(clusterID, k, g, holders)
	if len(envs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, 15*time.Second)
	defer cancel()
	self := n.host.ID()
	// Order: this node itself (no network), the joiners, then the rest in
	// random order, which spreads the owners' first rounds over the holders.
	order := slices.Collect(maps.Keys(envs))
	mrand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	rank := func(h peer.ID) int {
		switch {
		case h == self:
			return 0
		case slices.Contains(g.Joiners, h):
			return 1
		}
		return 2
	}
	slices.SortStableFunc(order, func(a, b peer.ID) int { return cmp.Compare(rank(a), rank(b)) })

	recorded := 0
	for len(order) > 0 {
		round := order
		if g.State == generations.StateOpen {
			n.keys.mu.Lock()
			held := len(sp.held)
			joinersLeft := 0
			for _, j := range g.Joiners {
				if !sp.held[j] && slices.Contains(order, j) {
					joinersLeft++
				}
			}
			n.keys.mu.Unlock()
			if held >= g.Threshold && joinersLeft == 0 {
				break
			}
			// The round reaches the threshold and every joiner left, which
			// come first in order (after this node itself).
			size := max(g.Threshold-held, joinersLeft)
			if order[0] == self && !slices.Contains(g.Joiners, self) && joinersLeft > 0 {
				size = max(size, joinersLeft+1)
			}
			round = order[:min(size, len(order))]
		}
		order = order[len(round):]
		recorded += n.pushRound(ctx, apply, g, sp, envs, round)
	}
	if recorded > 0 {
		log.Infow("shares escrowed", "generation", gen, "receipts", recorded, "holders", len(g.Members))
	}
}

// sealFor returns gen's split of K (made on first use) and the sealed
// envelopes for those of holders that still need one.
func (n *Node) sealFor(clusterID string, k []byte, g generations.Generation, holders []peer.ID) (*split, map[peer.ID]*shares.Envelope) {
	n.keys.mu.Lock()
	defer n.keys.mu.Unlock()
	sp := n.keys.splits[g.Number]
	if sp == nil {
		// A split is made once per generation. After a restart the split
		// this node used is gone: if the ledger says it is escrowed with it,
		// it pushes nothing more (its escrow stands); if not, the new split
		// replaces the old one completely (the ledger drops the old
		// receipts). Never a mix of two polynomials.
		var escrowed bool
		n.view(func(l *generations.Ledger) {
			for _, e := range l.Coverage(n.host.ID()).Live {
				if e.Generation == g.Number && e.Escrowed {
					escrowed = true
				}
			}
		})
		if escrowed {
			return nil, nil
		}
		parts, err := shares.Split(k, len(g.Members), g.Threshold)
		if err != nil {
			log.Errorw("split key", "generation", g.Number, "err", err)
			return nil, nil
		}
		sp = &split{shares: map[peer.ID][]byte{}, envs: map[peer.ID]*shares.Envelope{}, dup: map[peer.ID]bool{}, held: map[peer.ID]bool{}}
		sp.id = shares.NewSplitID()
		for i, m := range g.Members {
			sp.shares[m] = parts[i]
		}
		n.keys.splits[g.Number] = sp
		n.keys.made[g.Number] = sp.id
	}
	envs := map[peer.ID]*shares.Envelope{}
	for _, h := range holders {
		s, ok := sp.shares[h]
		if !ok || sp.dup[h] || sp.held[h] {
			continue
		}
		env := sp.envs[h]
		if env == nil {
			var err error
			env, err = shares.Seal(n.priv, shares.Binding{ClusterID: clusterID, Owner: n.host.ID(), Generation: g.Number, Holder: h, Split: sp.id}, s, rand.Reader)
			if err != nil {
				log.Errorw("seal envelope", "generation", g.Number, "holder", h, "err", err)
				continue
			}
			sp.envs[h] = env
		}
		envs[h] = env
	}
	return sp, envs
}

// pushRound pushes to holders in parallel and records the receipts it got,
// returning how many were recorded. Receipts go to the ledger in up to two
// batches: the first as soon as the generation's threshold is met and every
// joiner holds a share (what its commit waits for), the rest when every push
// is done, so a slow holder delays only its own receipt.
func (n *Node) pushRound(ctx context.Context, apply func(context.Context, *gpb.Command) error, g generations.Generation, sp *split, envs map[peer.ID]*shares.Envelope, holders []peer.ID) int {
	type result struct {
		holder peer.ID
		r      *shares.Receipt
		err    error
	}
	results := make(chan result, len(holders))
	for _, h := range holders {
		n.learnAddrs(h)
		n.redial(h)
		go func() {
			if hk := n.cfg.hooks; hk != nil && hk.dropPush != nil && hk.dropPush(h) {
				results <- result{holder: h, err: errors.New("push dropped by a test hook")}
				return
			}
			r, err := n.svc.Push(ctx, h, envs[h])
			results <- result{holder: h, r: r, err: err}
		}()
	}
	var batch []generations.Receipt
	recorded := 0
	record := func() bool {
		slices.SortFunc(batch, func(a, b generations.Receipt) int { return cmp.Compare(a.Holder, b.Holder) })
		if err := apply(ctx, generations.NewRecordReceipts(batch, n.now())); err != nil {
			if errors.Is(err, generations.ErrSplitMismatch) {
				// This node is escrowed in g with a split it no longer has
				// (it restarted): its escrow stands and it pushes no more.
				// A joiner in that state lost the K it escrowed: it gives
				// up, and is told to ask for a new invite.
				n.keys.mu.Lock()
				for _, r := range batch {
					sp.dup[r.Holder] = true
				}
				n.keys.mu.Unlock()
				if slices.Contains(g.Joiners, n.host.ID()) && !n.joinGaveUp.Swap(true) {
					n.giveUpJoin(g, true)
				}
				return false
			}
			// A generation retired or aborted while its receipts were on
			// their way is routine (the next duty pass shares into the
			// current one); anything else is worth a warning.
			if errors.Is(err, generations.ErrGenerationRetired) || errors.Is(err, generations.ErrGenerationAborted) {
				log.Infow("record receipts: the generation ended first", "generation", g.Number, "receipts", len(batch), "err", err)
			} else {
				log.Warnw("record receipts", "generation", g.Number, "receipts", len(batch), "err", err)
			}
			return false
		}
		recorded += len(batch)
		n.keys.mu.Lock()
		for _, r := range batch {
			sp.held[r.Holder] = true
		}
		n.keys.mu.Unlock()
		batch = nil
		return true
	}
	early := true
	for i := range len(holders) {
		res := <-results
		switch {
		case res.err == nil:
			batch = append(batch, generations.Receipt{
				Generation: g.Number, Owner: res.r.Owner, Holder: res.r.Holder, Split: sp.id,
				Digest: res.r.Digest[:], Signature: res.r.Signature,
			})
		case errors.Is(res.err, shares.ErrDuplicate):
			// The holder keeps an envelope of an earlier split (this node
			// restarted mid-generation). It cannot take this one.
			n.keys.mu.Lock()
			sp.dup[res.holder] = true
			n.keys.mu.Unlock()
			log.Infow("holder keeps an envelope of an earlier split; skipping it", "generation", g.Number, "holder", res.holder)
		default:
			log.Debugw("push share", "generation", g.Number, "holder", res.holder, "err", res.err)
		}
		if early && i < len(holders)-1 && len(batch) >= g.Threshold && holdsAll(batch, g.Joiners) {
			early = false
			if !record() {
				return recorded
			}
		}
	}
	if len(batch) > 0 {
		record()
	}
	return recorded
}

// standBy reports whether this node should hold back its sharing into open
// generation gen for now. A generation commits once t(g) owners are
// escrowed and every joiner holds t(g) shares (rules J2-J3): the joiners,
// the leader, and t(g)-|joiners|-1 other members suffice. Those go at once;
// the rest, picked by a hash of (generation, member) so every node agrees,
// wait standByFor after they first see the generation open, so the commit
// does not queue behind their disk writes. If the generation has not
// committed by then they share like everyone else.
func (n *Node) standBy(gen uint64) bool {
	self := n.host.ID()
	var g generations.Generation
	var ok bool
	n.view(func(l *generations.Ledger) { g, ok = l.Generation(gen) })
	if !ok || g.State != generations.StateOpen || slices.Contains(g.Joiners, self) {
		return false
	}
	leader := n.cons.Leader()
	if self == leader || leader == "" || !slices.Contains(standingBy(g, leader), self) {
		return false
	}
	n.escrow.mu.Lock()
	defer n.escrow.mu.Unlock()
	if n.escrow.openSeen == nil || n.escrow.openSeen[gen].IsZero() {
		n.escrow.openSeen = map[uint64]time.Time{gen: n.now()}
		time.AfterFunc(standByFor, n.pokeKeys)
		return true
	}
	return n.since(n.escrow.openSeen[gen]) < standByFor
}

// standingBy lists the members of open generation g that its commit does
// not wait for, given its leader: all but the joiners, the leader, and the
// first t(g)-|joiners|-1 others by a hash of (generation, member).
func standingBy(g generations.Generation, leader peer.ID) []peer.ID {
	var others []peer.ID
	for _, m := range g.Members {
		if m != leader && !slices.Contains(g.Joiners, m) {
			others = append(others, m)
		}
	}
	rank := func(p peer.ID) [32]byte {
		return sha256.Sum256(fmt.Appendf(nil, "p2pkey/standby/%d/%s", g.Number, p))
	}
	slices.SortFunc(others, func(a, b peer.ID) int {
		ra, rb := rank(a), rank(b)
		return bytes.Compare(ra[:], rb[:])
	})
	first := max(0, g.Threshold-len(g.Joiners)-1)
	if !slices.Contains(g.Members, leader) {
		first++ // the leader is not an owner of g: one more member must go
	}
	if first >= len(others) {
		return nil
	}
	return others[first:]
}

// redial lets the next stream to member p dial it even if a recent dial
// failed, at most once per redialEvery: a member behind a relay is often
// dialled before the relay connection is back (after a restart), and the
// swarm's backoff would otherwise hold it off for far longer.
func (n *Node) redial(p peer.ID) {
	if !n.connected(p) && n.redials.Allow(p, n.now()) {
		p2p.ClearDialBackoff(n.host, p)
	}
}

// holdsAll reports whether batch has a receipt by every one of holders.
func holdsAll(batch []generations.Receipt, holders []peer.ID) bool {
	for _, h := range holders {
		if !slices.ContainsFunc(batch, func(r generations.Receipt) bool { return r.Holder == h }) {
			return false
		}
	}
	return true
}

// missingCurrentHolders lists the holders of the current generation that
// have no receipt for this node yet, when this node still has the split it
// used for that generation. A node that is escrowed keeps topping its
// coverage up to every member; after a restart it has no split, and stops.
func (n *Node) missingCurrentHolders() (uint64, []peer.ID) {
	self := n.host.ID()
	var gen uint64
	var missing []peer.ID
	n.view(func(l *generations.Ledger) {
		cur, ok := l.Current()
		if !ok {
			return
		}
		m, ok := l.Matrix(cur.Number)
		if !ok {
			return
		}
		i := slices.Index(m.Peers, self)
		if i < 0 {
			return
		}
		gen = cur.Number
		for j, h := range m.Peers {
			if !m.Held[i][j] {
				missing = append(missing, h)
			}
		}
	})
	n.keys.mu.Lock()
	defer n.keys.mu.Unlock()
	if n.keys.splits[gen] == nil {
		return 0, nil
	}
	return gen, missing
}

// dropSplits forgets splits of generations that are no longer being shared
// into.
func (n *Node) dropSplits(d generations.Duties) {
	cur, missing := n.missingCurrentHolders()
	if len(missing) == 0 {
		cur = 0 // fully held: the split is no longer needed
	}
	n.keys.mu.Lock()
	defer n.keys.mu.Unlock()
	joining := uint64(0)
	if jg := n.joinGen.Load(); jg != nil {
		joining = jg.Number // ahead of a ledger that is still catching up
	}
	for g, sp := range n.keys.splits {
		if g == d.Open || g == d.Current || g == joining || (g == cur && len(sp.dup) == 0) {
			continue
		}
		sp.wipe()
		delete(n.keys.splits, g)
	}
}
