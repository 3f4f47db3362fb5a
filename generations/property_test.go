package generations

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pkey/p2pkey/generations/pb"
)

// sigCache memoises receipt signatures (digests are derived from the
// receipt's coordinates, so a signature is a pure function of them).
type sigKey struct {
	gen           uint64
	owner, holder peer.ID
	split         SplitID
}

type sigCache map[sigKey][]byte

// propSplits are the splits an owner's receipts belong to in the property
// test: mostly the first, now and then another (an owner that restarted
// and split again).
var propSplits = []SplitID{testSplit, {0x5e, 2}, {0x5e, 3}}

func (c sigCache) receipt(tb testing.TB, gen uint64, owner, holder peer.ID, split SplitID) Receipt {
	d := digestOf(gen, owner, holder)
	d[0] ^= split[1] // one digest per split
	k := sigKey{gen, owner, holder, split}
	sig, ok := c[k]
	if !ok {
		sig = signedSplit(tb, testCluster, gen, owner, holder, split, d).Signature
		c[k] = sig
	}
	return Receipt{Generation: gen, Owner: owner, Holder: holder, Split: split, Digest: d, Signature: sig}
}

type propRun struct {
	t       *testing.T
	rng     *rand.Rand
	h       *harness
	pool    []peer.ID
	sigs    sigCache
	nextInv int
	retired map[uint64]bool
	// byBound marks the retired generations that were more than the bound
	// behind the current one when they retired.
	byBound map[uint64]bool
	aborted map[uint64]bool
	// offline peers sign no receipts and get none (an absent member).
	offline map[peer.ID]bool
	// snapBefore is the state before the step's last command.
	snapBefore []byte
	// applied lists log entries that applied (replay candidates); the
	// counters count adversarial steps.
	applied                      []stamped
	adversarial, forged, replays int
	// lastEscrow is, per active member, the newest generation it was ever
	// seen escrowed in (0 if none); forgotten when it stops being active.
	lastEscrow map[peer.ID]uint64
	// marginKept counts steps in which G4 kept a generation only because
	// a member had no margin in a newer one (the margin rule at work).
	marginKept int
	// replaced counts splits replaced by another (Result.Replaced).
	replaced int
}

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.Intn(len(xs))] }

// inGrace reports whether the retained generation gs[i] is kept past the
// bound by LapseGrace: it is an active member's newest escrow, and the first
// generation after it committed less than LapseGrace before the ledger's
// clock, or a generation is open (a lapse waits for it to end).
func (p *propRun) inGrace(l *Ledger, gs []Generation, i int) bool {
	var missed time.Time
	for _, g := range gs[i+1:] {
		if g.State == StateCommitted || g.State == StateRetired {
			missed = g.CommittedAt
			break
		}
	}
	if _, open := l.Open(); !open && l.Now().Sub(missed) >= l.Retention().LapseGrace {
		return false
	}
	for _, m := range l.Members() {
		if m.Status == StatusActive && l.Coverage(m.ID).Generation == gs[i].Number {
			return true
		}
	}
	return false
}

// step applies one random command and returns it, whether it was a removal,
// and the error.
func (p *propRun) step() (*pb.Command, error) {
	h, r := p.h, p.rng
	l := h.l
	now := h.tick()
	if len(p.offline) > 0 && r.Intn(100) < 2 {
		// Now and then the away member stays away past LapseGrace, so
		// that the retention bound can lapse it.
		h.now = h.now.Add(LapseGrace)
		now = h.now
	}
	// At most one member is away at a time, for about 150 steps: while
	// away it takes part in no receipt, so the retention bound can catch
	// it.
	if act := l.Active(); len(p.offline) == 0 && len(act) > 1 && r.Intn(100) < 5 {
		who := pick(r, act)
		if l.Coverage(who).Generation == 0 {
			who = pick(r, act) // prefer an escrowed one: it has something to lose
		}
		p.offline[who] = true
	} else if len(p.offline) > 0 && r.Intn(150) == 0 {
		clear(p.offline)
	}
	var cmd *pb.Command
	switch k := r.Intn(100); {
	case k < 17: // join, direct or through a generation
		who := pick(r, p.pool)
		delete(p.offline, who) // a peer that asks to join is back
		issuer := pick(r, p.pool)
		if act := l.Active(); len(act) > 0 && r.Intn(4) > 0 {
			issuer = pick(r, act)
		}
		p.nextInv++
		if _, err := h.apply(NewAddInvite(inviteHash(p.nextInv), invitePub(p.nextInv), now.Add(time.Duration(1+r.Intn(60))*time.Second), issuer, now)); err != nil {
			return NewAddInvite(inviteHash(p.nextInv), invitePub(p.nextInv), now.Add(time.Second), issuer, now), err
		}
		p.snapBefore, _ = l.Snapshot()
		var dl time.Time
		if r.Intn(3) > 0 {
			dl = now.Add(time.Duration(5+r.Intn(60)) * time.Second)
		}
		inv := p.nextInv
		if r.Intn(10) == 0 {
			inv = r.Intn(p.nextInv + 3) // reused or forged
		}
		cmd = NewConsumeInvite(inviteHash(inv), who, testCluster, dl, now)
	case k < 25:
		cmd = NewOpenGeneration(now.Add(time.Duration(5+r.Intn(60))*time.Second), now)
	case k < 70: // receipts, mostly valid
		var g Generation
		var ok bool
		if r.Intn(4) == 0 {
			g, ok = l.Current()
		} else {
			g, ok = l.Open()
		}
		if !ok {
			gs := l.Generations()
			if len(gs) == 0 {
				return nil, nil
			}
			g = pick(r, gs)
		}
		online := make([]peer.ID, 0, len(g.Members))
		for _, m := range g.Members {
			if !p.offline[m] {
				online = append(online, m)
			}
		}
		if len(online) == 0 {
			online = g.Members
		}
		// Receipts are recorded by their owner, one owner per batch, all of
		// one split: mostly the first, now and then another (a restarted
		// owner's new split, which replaces an unescrowed one and is
		// refused against an escrowed one).
		var rs []Receipt
		o := pick(r, online)
		split := propSplits[0]
		if r.Intn(8) == 0 {
			split = pick(r, propSplits)
		}
		if r.Intn(4) == 0 {
			// The owner's whole push to the online members, as a node
			// does it: generations commit faster, so absences matter.
			for _, hd := range online {
				rs = append(rs, p.sigs.receipt(p.t, g.Number, o, hd, split))
			}
		}
		for n := 1 + r.Intn(6); n > 0; n-- {
			hd := pick(r, online)
			if r.Intn(20) == 0 {
				hd = pick(r, p.pool)
			}
			rc := p.sigs.receipt(p.t, g.Number, o, hd, split)
			switch r.Intn(30) {
			case 0:
				rc.Signature = append([]byte(nil), rc.Signature...)
				rc.Signature[r.Intn(len(rc.Signature))] ^= 0x40
			case 1:
				rc.Digest = digestOf(g.Number+1000, o, hd)
			case 2:
				rc.Generation = uint64(1 + r.Intn(len(l.Generations())+1))
			}
			rs = append(rs, rc)
		}
		cmd = NewRecordReceipts(rs, now)
	case k < 77:
		gs := l.Generations()
		if len(gs) == 0 {
			return nil, nil
		}
		g := pick(r, gs)
		at := now
		if g.State == StateOpen && r.Intn(2) == 0 {
			at = g.Deadline.Add(time.Duration(r.Intn(3)) * time.Second)
			h.now = at
		}
		cmd = NewAbortGeneration(g.Number, at)
	case k < 82:
		gs := l.Generations()
		if len(gs) == 0 {
			return nil, nil
		}
		cmd = NewRetireGeneration(pick(r, gs).Number, now)
	case k < 86:
		who := pick(r, p.pool)
		if p.offline[who] && r.Intn(4) > 0 {
			who = pick(r, p.pool) // absent members are left to the retention bound, mostly
		}
		cmd = NewRemoveMember(who, now.Add(time.Duration(5+r.Intn(60))*time.Second), now)
	case k < 89:
		cmd = NewRecordKeyCheck(pick(r, p.pool), []byte{byte(r.Intn(2))}, now)
	case k < 94:
		n := uint32(1 + r.Intn(3))
		if r.Intn(15) == 0 {
			n = pick(r, []uint32{0, MaxGenerationsBehindLimit + 1})
		}
		by := pick(r, p.pool)
		if act := l.Active(); len(act) > 0 && r.Intn(3) > 0 {
			by = pick(r, act)
		}
		cmd = NewSetRetention(n, by, now)
	default:
		cmd = NewSetAddrs(pick(r, p.pool), []string{fmt.Sprintf("/ip4/10.0.0.%d/tcp/4001", r.Intn(255))}, now)
	}
	// The adversary: sometimes the command comes from a random author (one
	// that may not act for its subject), with a forged signature, or is a
	// replay of an entry already in the log. None of those may ever apply
	// unless the author really is allowed to send it.
	switch k := r.Intn(100); {
	case k < 6:
		author := pick(r, p.pool)
		natural := h.naturalAuthor(cmd)
		_, err := h.applyAs(author, cmd)
		if err == nil && author != natural && len(subjects(cmd)) > 0 {
			p.t.Fatalf("%s applied with author %s acting for %s", KindOf(cmd), author, natural)
		}
		p.adversarial++
		return cmd, err
	case k < 9:
		h.sign(cmd, h.naturalAuthor(cmd))
		cmd.Signature[r.Intn(len(cmd.Signature))] ^= 0x20
		_, err := h.applySigned(cmd)
		if err == nil || !errors.Is(err, ErrBadCommandSignature) && !errors.Is(err, ErrBadSignature) && ErrorCode(err) == "" {
			p.t.Fatalf("forged signature on %s: %v", KindOf(cmd), err)
		}
		if errors.Is(err, ErrBadCommandSignature) {
			p.forged++
		}
		return cmd, err
	case k < 12 && len(p.applied) > 0:
		e := pick(r, p.applied)
		_, err := h.l.Apply(max(e.now, h.now.UnixNano()), e.cmd)
		if err == nil {
			p.t.Fatal("a replayed command applied again")
		}
		if errors.Is(err, ErrReplay) {
			p.replays++
		}
		return cmd, err
	}
	res, err := h.apply(cmd)
	p.replaced += res.Replaced
	if err == nil && len(h.log) > 0 {
		p.applied = append(p.applied, h.log[len(h.log)-1])
	}
	return cmd, err
}

// escrowView is, per active member of the current generation, the newest
// committed generation it is escrowed in and the committed generations in
// which it is escrowed with margin.
type escrowView struct {
	newest  map[peer.ID]uint64
	margins map[peer.ID][]uint64
}

// currentEscrows maps every active member of the current generation to the
// newest committed generation it is escrowed in, and to the committed
// generations in which it is escrowed with margin.
func currentEscrows(l *Ledger) escrowView {
	out := escrowView{newest: map[peer.ID]uint64{}, margins: map[peer.ID][]uint64{}}
	cur, ok := l.Current()
	if !ok {
		return out
	}
	for _, m := range cur.Members {
		if mm, _ := l.Member(m); mm.Status == StatusActive {
			out.newest[m] = l.Coverage(m).Generation
			out.margins[m] = marginGenerations(l, m)
		}
	}
	return out
}

// marginGenerations lists the committed generations in which owner is
// escrowed with margin, as the test reads the rule: the receipts of its one
// split number at least min(t(g)+1, |M(g)|), so it can lose any one holder,
// itself included, and keep t(g).
func marginGenerations(l *Ledger, owner peer.ID) []uint64 {
	var out []uint64
	for _, e := range l.Coverage(owner).Live {
		g, _ := l.Generation(e.Generation)
		if e.State != StateCommitted || len(e.Holders) == 0 {
			continue
		}
		if sp, ok := l.Split(e.Generation, owner); !ok || sp != e.Split {
			continue
		}
		if e.Held >= min(g.Threshold+1, len(g.Members)) {
			out = append(out, e.Generation)
		}
	}
	return out
}

// currentIn is the current generation's number in the listing, 0 if
// none.
func currentIn(gs []Generation) uint64 {
	for i := len(gs) - 1; i >= 0; i-- {
		if gs[i].State == StateCommitted {
			return gs[i].Number
		}
	}
	return 0
}

// behindBy counts the committed (or retired) generations in (g, cur], from
// the listing: how far the retention bound sees g behind the current one.
func behindBy(gs []Generation, g, cur uint64) int {
	n := 0
	for i := g + 1; i <= cur; i++ {
		if s := gs[i-1].State; s == StateCommitted || s == StateRetired {
			n++
		}
	}
	return n
}

func (p *propRun) check(step int, cmd *pb.Command, before escrowView) {
	t, l := p.t, p.h.l
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("step %d (%T): %s", step, cmd.GetBody(), fmt.Sprintf(format, args...))
	}
	gs := l.Generations()
	open := 0
	var newestCommitted uint64
	for i, g := range gs {
		if g.Number != uint64(i+1) {
			fail("generation numbering")
		}
		switch g.State {
		case StateOpen:
			open++
		case StateCommitted:
			newestCommitted = g.Number
		case StateRetired:
			if !p.retired[g.Number] {
				// Newly retired: beyond the bound, or by G4 alone.
				p.byBound[g.Number] = behindBy(gs, g.Number, currentIn(gs)) > int(l.Retention().MaxGenerationsBehind)
			}
			p.retired[g.Number] = true
		case StateAborted:
			p.aborted[g.Number] = true
		}
		if !g.State.Live() && g.Receipts != 0 {
			fail("%s generation %d keeps %d receipts", g.State, g.Number, g.Receipts)
		}
		if p.retired[g.Number] && g.State != StateRetired {
			fail("retired generation %d came back as %s", g.Number, g.State)
		}
		if p.aborted[g.Number] && g.State != StateAborted {
			fail("aborted generation %d came back as %s", g.Number, g.State)
		}
		if g.Threshold != len(g.Members)/2+1 {
			fail("threshold")
		}
	}
	if open > 1 {
		fail("%d generations open", open)
	}
	if l.countActive() == 0 {
		fail("no active member")
	}
	cur, ok := l.Current()
	if ok != (newestCommitted != 0) || ok && (cur.State != StateCommitted || cur.Number != newestCommitted) {
		fail("Current() = %+v, newest committed %d", cur, newestCommitted)
	}
	// The retention bound: no retained committed generation is more than
	// MaxGenerationsBehind committed generations behind the current one.
	k := l.Retention().MaxGenerationsBehind
	if k < 1 || k > MaxGenerationsBehindLimit {
		fail("retention bound %d", k)
	}
	if ok {
		// Counted from the listing, not with the ledger's own helper:
		// aborted generations do not count.
		behind := 0
		for i := int(cur.Number) - 2; i >= 0; i-- {
			if s := gs[i+1].State; s == StateCommitted || s == StateRetired {
				behind++
			}
			if gs[i].State == StateCommitted && behind > int(k) && !p.inGrace(l, gs, i) {
				var dbg []string
				for _, m := range l.Members() {
					dbg = append(dbg, fmt.Sprintf("%s:%s:cov%d", m.ID.String()[len(m.ID.String())-4:], m.Status, l.Coverage(m.ID).Generation))
				}
				for _, g := range gs {
					dbg = append(dbg, fmt.Sprintf("g%d:%s:c%v", g.Number, g.State, p.h.now.Sub(g.CommittedAt)))
				}
				fail("generation %d retained %d behind the current %d, bound %d %v", gs[i].Number, behind, cur.Number, k, dbg)
			}
		}
	}
	// A lapsed member is in no open generation.
	var lapsed []peer.ID
	for _, m := range l.Members() {
		if m.Status == StatusLapsed {
			lapsed = append(lapsed, m.ID)
		}
	}
	if og, isOpen := l.Open(); isOpen {
		for _, x := range lapsed {
			if slices.Contains(og.Members, x) {
				fail("lapsed %s in open generation %d", x, og.Number)
			}
		}
	}
	// G4: no active member of the current generation loses its last escrow
	// (removal of a holder is the only way an escrow can shrink).
	_, isRemoval := cmd.GetBody().(*pb.Command_RemoveMember)
	after := currentEscrows(l)
	for m, e := range after.newest {
		if prev, ok := before.newest[m]; ok && prev > 0 && !isRemoval && e < prev {
			fail("member %s escrow went from %d to %d", m, prev, e)
		}
	}
	for _, g := range gs {
		if g.State == StateRetired {
			for m, e := range after.newest {
				// The bound may retire a generation newer than a member's
				// newest escrow, which it keeps for LapseGrace.
				if e != 0 && e <= g.Number && !p.byBound[g.Number] {
					fail("generation %d retired but %s's newest escrow is %d", g.Number, m, e)
				}
			}
		}
	}
	if ok {
		p.checkMargins(fail, gs, cur.Number, int(k), isRemoval, before, after)
	}
	// R1: nothing of a removed owner is servable or counted, and a lapsed
	// member has no served receipts (checked fully after removals and every
	// 10th step; it is the slow part).
	if !isRemoval && step%10 != 0 {
		return
	}
	for _, x := range lapsed {
		if l.Coverage(x).CanUnlock {
			fail("lapsed %s can unlock", x)
		}
		for _, g := range gs {
			for _, hd := range p.pool {
				if l.ServeAllowed(g.Number, x, hd) == nil || l.EnvelopeLive(g.Number, x, hd) {
					fail("lapsed owner %s servable in %d", x, g.Number)
				}
				if _, has := l.ReceiptDigest(g.Number, x, hd); has {
					fail("lapsed owner %s keeps a receipt in %d", x, g.Number)
				}
			}
		}
	}
	for _, m := range l.Members() {
		if m.Status != StatusRemoved {
			continue
		}
		if l.Coverage(m.ID).CanUnlock {
			fail("removed %s can unlock", m.ID)
		}
		for _, g := range gs {
			for _, hd := range p.pool {
				if l.ServeAllowed(g.Number, m.ID, hd) == nil || l.EnvelopeLive(g.Number, m.ID, hd) {
					fail("removed owner %s servable in %d", m.ID, g.Number)
				}
			}
			if mx, _ := l.Matrix(g.Number); mx.Generation != 0 {
				for i, o := range mx.Peers {
					for j := range mx.Peers {
						if (o == m.ID || mx.Peers[j] == m.ID) && mx.Held[i][j] {
							fail("receipt of removed %s in %d", m.ID, g.Number)
						}
					}
				}
			}
		}
	}
}

// checkMargins checks G4's margin rule after a step:
//
//   - for every active member of the current generation, either some
//     retained generation escrows it with margin (min(t+1,|M|) receipts of
//     one split), or the newest generation it was ever escrowed in is
//     retained, unless the retention bound took that one (it overrides);
//   - no generation in which a member was escrowed with margin is retired
//     by G4 (that is, within the bound) unless the member is escrowed with
//     margin in a newer retained generation: retirement never leaves a
//     member with only a bare threshold when it had more. A removal may
//     take a margin away (it deletes the removed holder's receipts).
func (p *propRun) checkMargins(fail func(string, ...any), gs []Generation, cur uint64, k int, isRemoval bool, before, after escrowView) {
	retained := func(g uint64) bool { return gs[g-1].State == StateCommitted }
	for m := range p.lastEscrow {
		if _, ok := after.newest[m]; !ok {
			delete(p.lastEscrow, m) // no longer active: lapsed, removed
		}
	}
	for m, e := range after.newest {
		last := max(p.lastEscrow[m], e)
		p.lastEscrow[m] = last
		if len(after.margins[m]) > 0 || last == 0 || retained(last) {
			continue
		}
		if behindBy(gs, last, cur) <= k {
			fail("%s has no margin in any retained generation and its newest escrow %d is %s, %d behind the current %d (bound %d)",
				m, last, gs[last-1].State, behindBy(gs, last, cur), cur, k)
		}
	}
	if isRemoval {
		return
	}
	for m, gens := range before.margins {
		if _, ok := after.newest[m]; !ok {
			continue
		}
		now := after.margins[m]
		for _, g := range gens {
			if retained(g) || behindBy(gs, g, cur) > k {
				continue
			}
			if len(now) == 0 || slices.Max(now) <= g {
				fail("generation %d, where %s was escrowed with margin, was retired within the bound (%d behind, bound %d), and %s has no margin in a newer retained generation (margins now %v)",
					g, m, behindBy(gs, g, cur), k, m, now)
			}
		}
		if len(now) > 0 && slices.Max(now) < after.newest[m] {
			p.marginKept++
		}
	}
}

func TestPropertyRandomSequences(t *testing.T) {
	seqs, steps := 200, 200
	if testing.Short() {
		seqs = 40
	}
	ks := keys(t, 10)
	sigs := sigCache{}
	var stats struct {
		applied, rejected, commits, aborts, retires, removals int
		lapses, rejoins, setRetention                         int
	}
	var adversary struct{ adversarial, forged, replays int }
	var marginKept, replaced int
	// edges counts the member status changes seen, each of which must be
	// one transition of the member table.
	edges := map[[2]MemberStatus]int{}
	for seq := 0; seq < seqs; seq++ {
		rng := rand.New(rand.NewSource(int64(seq)))
		h := newHarness(t)
		pool := make([]peer.ID, 0, len(ks))
		for _, k := range ks[:4+rng.Intn(len(ks)-4)] {
			pool = append(pool, k.id)
		}
		p := &propRun{
			t: t, rng: rng, h: h, pool: pool, sigs: sigs,
			retired: map[uint64]bool{}, byBound: map[uint64]bool{}, aborted: map[uint64]bool{}, offline: map[peer.ID]bool{},
			lastEscrow: map[peer.ID]uint64{},
		}

		h.must(NewBootstrapWithRetention(testCluster, pool[0], uint32(rng.Intn(4)), h.tick()))
		for i := 0; i < steps; i++ {
			before := currentEscrows(h.l)
			var err error
			if p.snapBefore, err = h.l.Snapshot(); err != nil {
				t.Fatal(err)
			}
			gensBefore := h.l.Generations()
			lapsedBefore := h.l.withStatus(StatusLapsed)
			statusBefore := statuses(h.l, pool)
			cmd, err := p.step()
			if cmd == nil {
				continue
			}
			for j, after := range statuses(h.l, pool) {
				from := statusBefore[j]
				if from == after {
					continue
				}
				if !oneTransition(from, after) {
					t.Fatalf("seq %d step %d: %T moved %s from %s to %s, not one transition of the member table", seq, i, cmd.GetBody(), pool[j], from, after)
				}
				edges[[2]MemberStatus{from, after}]++
			}
			if err == nil {
				stats.applied++
				switch b := cmd.GetBody().(type) {
				case *pb.Command_RemoveMember:
					stats.removals++
				case *pb.Command_SetRetention:
					stats.setRetention++
				case *pb.Command_ConsumeInvite:
					if slices.Contains(lapsedBefore, peer.ID(b.ConsumeInvite.GetJoiner())) {
						stats.rejoins++
					}
				}
				for _, x := range h.l.withStatus(StatusLapsed) {
					if !slices.Contains(lapsedBefore, x) {
						stats.lapses++
					}
				}
				for _, g := range h.l.Generations() {
					if int(g.Number) > len(gensBefore) || gensBefore[g.Number-1].State == g.State {
						continue
					}
					switch g.State {
					case StateCommitted:
						stats.commits++
					case StateAborted:
						stats.aborts++
					case StateRetired:
						stats.retires++
					}
				}
			} else {
				stats.rejected++
			}
			if err != nil {
				if ErrorCode(err) == "" || errors.Is(err, ErrInternal) {
					t.Fatalf("seq %d step %d: error without a sentinel or internal: %v", seq, i, err)
				}
				if snapAfter, _ := h.l.Snapshot(); !bytes.Equal(p.snapBefore, snapAfter) {
					t.Fatalf("seq %d step %d: rejected %T changed the state: %v", seq, i, cmd.GetBody(), err)
				}
			}
			p.check(i, cmd, before)
		}
		// Determinism: the same log gives the same bytes, from scratch and
		// from a snapshot taken midway.
		adversary.adversarial += p.adversarial
		adversary.forged += p.forged
		adversary.replays += p.replays
		marginKept += p.marginKept
		replaced += p.replaced
		if seq%10 == 0 {
			checkReplay(t, h.log)
		}
	}
	t.Logf("%+v adversarial=%d forged=%d replays=%d", stats, adversary.adversarial, adversary.forged, adversary.replays)
	t.Logf("steps where G4 kept an older generation for a member's margin: %d; splits replaced: %d", marginKept, replaced)
	if marginKept == 0 || replaced == 0 {
		t.Fatal("sequences never exercise the margin rule or a split replacement")
	}
	if adversary.forged == 0 || adversary.replays == 0 || adversary.adversarial == 0 {
		t.Fatal("the adversary never forged, replayed or spoke for another")
	}
	if stats.commits == 0 || stats.aborts == 0 || stats.retires == 0 || stats.removals == 0 ||
		stats.lapses == 0 || stats.rejoins == 0 || stats.setRetention == 0 {
		t.Fatalf("sequences do not exercise every transition: %+v", stats)
	}
	t.Logf("member status changes: %v", edges)
	for from, row := range memberTransitions {
		for e, to := range row {
			if from == StatusUnknown && e == MemberAdmit {
				continue // the founder's, at Bootstrap, before the first step
			}
			if edges[[2]MemberStatus{from, to}] == 0 {
				t.Errorf("sequences never move a member %s --%s--> %s", from, e, to)
			}
		}
	}
}

// statuses returns the status of each peer (StatusUnknown if unrecorded).
func statuses(l *Ledger, peers []peer.ID) []MemberStatus {
	out := make([]MemberStatus, len(peers))
	for i, p := range peers {
		if m, ok := l.Member(p); ok {
			out[i] = m.Status
		}
	}
	return out
}

// oneTransition reports whether some event of the member table moves a
// member from one status to the other.
func oneTransition(from, to MemberStatus) bool {
	for _, next := range memberTransitions[from] {
		if next == to {
			return true
		}
	}
	return false
}

// checkReplay replays log into fresh ledgers and compares snapshots.
func checkReplay(t *testing.T, log []stamped) {
	t.Helper()
	want := replay(t, New(), log)
	if got := replay(t, New(), log); !bytes.Equal(got, want) {
		t.Fatal("replaying the same log gave different snapshots")
	}
	mid := len(log) / 2
	half := New()
	snap := replay(t, half, log[:mid])
	restored := New()
	if err := restored.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if got := replay(t, restored, log[mid:]); !bytes.Equal(got, want) {
		t.Fatal("restore midway + replay differs from a full replay")
	}
}

func replay(t *testing.T, l *Ledger, log []stamped) []byte {
	t.Helper()
	for _, e := range log {
		_, _ = l.Apply(e.now, e.cmd) // rejected entries are part of the log too
	}
	b, err := l.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
