package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/shares"
)

// sweep deletes envelopes the ledger says must go: those of aborted and
// retired generations and of removed owners (rules G3, G4, R1). It acts only
// on what the ledger names explicitly, so a ledger that is still catching up
// never causes a deletion.
func (n *Node) sweep(d generations.Duties) {
	for _, g := range d.DeleteGenerations {
		if n.holder.swept(sweepKey{kind: sweptGeneration, gen: g}) {
			continue
		}
		if err := n.store.DeleteGeneration(g); err != nil {
			log.Warnw("delete envelopes of generation", "generation", g, "err", err)
			continue
		}
		n.holder.markSwept(sweepKey{kind: sweptGeneration, gen: g})
		log.Infow("deleted envelopes of a finished generation", "generation", g)
	}
	for _, lo := range d.DeleteLapsedOwners {
		// A lapsed owner may come back with the same identity, so this
		// sweep is keyed by how far it reaches, not remembered per owner.
		key := sweepKey{kind: sweptLapsed, owner: lo.Owner, gen: lo.Through}
		if n.holder.swept(key) {
			continue
		}
		keys, err := n.store.List()
		if err != nil {
			log.Warnw("list envelopes", "err", err)
			continue
		}
		var dead []shares.Key
		for _, k := range keys {
			if k.Owner == lo.Owner && k.Generation <= lo.Through {
				dead = append(dead, k)
			}
		}
		if err := n.store.DeleteKeys(dead); err != nil {
			log.Warnw("delete envelopes of lapsed owner", "owner", lo.Owner, "err", err)
			continue
		}
		n.holder.markSwept(key)
		log.Infow("deleted envelopes of a lapsed owner", "owner", lo.Owner, "through", lo.Through)
	}
	for _, o := range d.DeleteOwners {
		if n.holder.swept(sweepKey{kind: sweptRemoved, owner: o}) {
			continue
		}
		if err := n.store.DeleteOwner(o); err != nil {
			log.Warnw("delete envelopes of removed owner", "owner", o, "err", err)
			continue
		}
		n.holder.markSwept(sweepKey{kind: sweptRemoved, owner: o})
		log.Infow("deleted envelopes of a removed owner", "owner", o)
	}
}

// holderState remembers which of the ledger's deletion duties this holder
// has carried out, so that each is done once per process.
type holderState struct {
	mu   sync.Mutex
	done map[sweepKey]bool
}

// sweepKind says what a sweep deleted.
type sweepKind uint8

const (
	sweptGeneration sweepKind = iota + 1 // every envelope of an aborted or retired generation
	sweptLapsed                          // a lapsed owner's envelopes up to a generation
	sweptRemoved                         // a removed owner's envelopes
)

// sweepKey names one deletion duty.
type sweepKey struct {
	kind  sweepKind
	owner peer.ID
	gen   uint64
}

func (h *holderState) swept(k sweepKey) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.done[k]
}

func (h *holderState) markSwept(k sweepKey) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done == nil {
		h.done = map[sweepKey]bool{}
	}
	h.done[k] = true
}

// sharePolicy answers the share protocol's questions from the ledger (rules
// S2, S3). Holders serve envelopes even while they are locked themselves.
type sharePolicy struct{ n *Node }

// pushWait bounds how long a holder waits for its own ledger to learn of a
// generation an owner is already pushing into: the owner saw the generation
// open a commit round trip earlier.
const pushWait = 500 * time.Millisecond

func (p sharePolicy) AllowPush(owner peer.ID, gen uint64) error {
	timeout := time.NewTimer(pushWait)
	defer timeout.Stop()
	jgSet := p.n.joinGenSet
	for {
		applied := p.n.cons.AppliedChan()
		err := p.allowPush(owner, gen)
		if !errors.Is(err, errGenerationUnknown) {
			return err
		}
		select {
		case <-p.n.ctx.Done():
			return err
		case <-timeout.C:
			return err
		case <-applied:
		case <-jgSet:
			jgSet = nil // fires once
		}
	}
}

var errGenerationUnknown = errors.New("generation is unknown to this holder")

func (p sharePolicy) allowPush(owner peer.ID, gen uint64) error {
	self := p.n.host.ID()
	var err error
	p.n.view(func(l *generations.Ledger) {
		if m, ok := l.Member(owner); ok && m.Status == generations.StatusRemoved {
			err = fmt.Errorf("%w: %s", shares.ErrOwnerRemoved, owner)
			return
		}
		g, ok := l.Generation(gen)
		if jg := p.n.joinGen.Load(); !ok && jg != nil && jg.Number == gen {
			// A joiner whose ledger has not caught up yet holds for the
			// generation its join response named.
			g, ok = jg.generation(), true
		}
		if !ok {
			err = fmt.Errorf("%w: %w: %d", shares.ErrGenerationNotOpen, errGenerationUnknown, gen)
			return
		}
		cur, hasCur := l.Current()
		if g.State != generations.StateOpen && !(hasCur && cur.Number == gen) {
			err = fmt.Errorf("%w: generation %d is %s", shares.ErrGenerationNotOpen, gen, g.State)
			return
		}
		if !slices.Contains(g.Members, owner) || !slices.Contains(g.Members, self) {
			err = fmt.Errorf("%w: owner or holder is not in generation %d", shares.ErrForbidden, gen)
		}
	})
	return err
}

// freshWait bounds how long a holder waits to confirm that its ledger is
// caught up with a leader before it serves an envelope (rule S9).
const freshWait = 3 * time.Second

// splitDecision decides a push of another split for (gen, owner) than the
// one this holder stores: the stored envelope is replaced unless the ledger
// records owner as escrowed in gen with it. An owner that restarted mid-
// generation replaces a split it never completed; an escrowed split is
// never overwritten, so a holder never loses a share the ledger counts.
func (p sharePolicy) splitDecision(owner peer.ID, gen uint64, stored, pushed generations.SplitID) error {
	escrowedWith := func() (split generations.SplitID, escrowed bool) {
		p.n.view(func(l *generations.Ledger) {
			for _, e := range l.Coverage(owner).Live {
				if e.Generation == gen && e.Escrowed {
					split, escrowed = e.Split, true
				}
			}
		})
		return split, escrowed
	}
	if split, escrowed := escrowedWith(); escrowed && split == stored {
		return shares.RefuseNewSplit(owner, gen, stored, pushed)
	}
	// Replacing is decided on a ledger confirmed current: a holder that
	// restarted may not yet have applied the receipts that made the stored
	// split the counted one (issue 12). Unconfirmed, it keeps what it has;
	// the owner's next round asks again.
	ctx, cancel := context.WithTimeout(p.n.ctx, freshWait)
	defer cancel()
	if err := p.n.cons.Fresh(ctx); err != nil {
		return fmt.Errorf("%w: this holder cannot confirm its ledger is current (%v), so it keeps the split it has", shares.ErrForbidden, err)
	}
	if split, escrowed := escrowedWith(); escrowed && split == stored {
		return shares.RefuseNewSplit(owner, gen, stored, pushed)
	}
	return nil
}

func (p sharePolicy) AllowFetch(owner peer.ID, gen uint64) error {
	// Serve only from a ledger caught up with a leader heard from now: a
	// holder cut off while a removal or suspension committed must not serve
	// from its stale copy (rule S9).
	ctx, cancel := context.WithTimeout(p.n.ctx, freshWait)
	defer cancel()
	start := time.Now()
	err := p.n.cons.Fresh(ctx)
	p.n.trace("serve %s: confirming the ledger current (read index) took %v, err %v", owner, time.Since(start), err)
	if err != nil {
		return fmt.Errorf("%w: this holder cannot confirm its ledger is current (%v); it serves no envelope until it can", shares.ErrForbidden, err)
	}
	p.n.view(func(l *generations.Ledger) {
		if m, ok := l.Member(owner); ok && m.Status == generations.StatusRemoved {
			err = fmt.Errorf("%w: %s", generations.ErrOwnerRemoved, owner)
			return
		} else if ok && m.Status == generations.StatusLapsed {
			err = fmt.Errorf("%w: %s", generations.ErrOwnerLapsed, owner)
			return
		}
		err = l.ServeAllowed(gen, owner, p.n.host.ID())
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, generations.ErrOwnerSuspended):
		return fmt.Errorf("%w: %v", shares.ErrOwnerSuspended, err)
	case errors.Is(err, generations.ErrOwnerLapsed):
		return fmt.Errorf("%w: %v", shares.ErrOwnerLapsed, err)
	case errors.Is(err, generations.ErrOwnerRemoved):
		return fmt.Errorf("%w: %v", shares.ErrOwnerRemoved, err)
	default:
		return fmt.Errorf("%w: %v", shares.ErrForbidden, err)
	}
}
