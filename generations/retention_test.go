package generations

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations/pb"
)

// commitRound opens the next generation and commits it with every receipt
// among its members that are not absent.
func commitRound(t *testing.T, h *harness, absent ...peer.ID) Result {
	t.Helper()
	// Each round comes LapseGrace after the last: the absent members are
	// past their grace, so the bound applies at this commit as it did
	// before the grace existed.
	h.now = h.now.Add(LapseGrace)
	h.must(NewOpenGeneration(h.now.Add(time.Hour), h.tick()))
	g, _ := h.l.Open()
	var present []peer.ID
	for _, m := range g.Members {
		if !slices.Contains(absent, m) {
			present = append(present, m)
		}
	}
	res := h.must(NewRecordReceipts(h.fullReceipts(g.Number, present), h.tick()))
	if res.Committed != g.Number {
		t.Fatalf("generation %d did not commit: %+v", g.Number, res)
	}
	return res
}

// assertNothingServable checks that no envelope of owner x is recorded,
// live or servable in any generation (the lapsed-owner rule, like R1).
func assertNothingServable(t *testing.T, l *Ledger, x peer.ID, pool []peer.ID) {
	t.Helper()
	for _, g := range l.Generations() {
		for _, hd := range pool {
			if l.ServeAllowed(g.Number, x, hd) == nil || l.EnvelopeLive(g.Number, x, hd) {
				t.Fatalf("envelope of %s held by %s servable in generation %d", x, hd, g.Number)
			}
			if _, ok := l.ReceiptDigest(g.Number, x, hd); ok {
				t.Fatalf("receipt of %s kept in generation %d", x, g.Number)
			}
		}
	}
}

// TestRetentionBoundLapsesAbsentMember is the seed's open problem: x is
// offline through MaxGenerationsBehind+1 generations. It keeps its old,
// smaller escrow while the bound allows, lapses exactly when the bound is
// crossed (its generation retires, receipts and all), and rejoins with a
// new invite.
func TestRetentionBoundLapsesAbsentMember(t *testing.T) {
	h, ids := cluster(t, 4) // default bound
	a, x := ids[0], ids[3]
	k := h.l.Retention().MaxGenerationsBehind
	if k != DefaultMaxGenerationsBehind {
		t.Fatalf("default retention = %d", k)
	}
	h.must(NewRecordKeyCheck(x, []byte("kc-x"), h.tick()))

	// x goes offline. Generations 2..1+k commit without it: generation 1 is
	// kept for it (G4, G5) and it can still unlock with it.
	for n := uint64(2); n <= 1+uint64(k); n++ {
		res := commitRound(t, h, x)
		if len(res.Lapsed) != 0 || len(res.Retired) != 0 {
			t.Fatalf("generation %d: nothing may lapse or retire yet: %+v", n, res)
		}
		cov := h.l.Coverage(x)
		if cov.Generation != 1 || cov.Behind != n-1 || !cov.CanUnlock {
			t.Fatalf("generation %d: x must unlock with 1, %d behind: %+v", n, n-1, cov)
		}
		// With x away, a, b and c have exactly t(g) = 3 of 4 receipts in
		// every new generation, no margin: generation 1, where all four
		// hold each other's shares, is kept for them too (G4).
		if bl := h.l.RetentionBlockers(1); !slices.Equal(bl, h.l.Active()) {
			t.Fatalf("blockers of 1: %v", bl)
		}
	}
	// One more commit crosses the bound: 1 is k+1 behind. Before it, x
	// showed up just long enough to hold a's envelope and push its own to
	// itself (a locked node can hold, but not escrow).
	h.must(NewOpenGeneration(h.now.Add(time.Hour), h.tick()))
	cur := uint64(k) + 2
	h.must(NewRecordReceipts([]Receipt{
		signed(t, testCluster, cur, a, x, digestOf(cur, a, x)),
		signed(t, testCluster, cur, x, x, digestOf(cur, x, x)),
	}, h.tick()))
	res := h.must(NewRecordReceipts(h.fullReceipts(cur, ids[:3]), h.tick()))
	if res.Committed != cur {
		t.Fatalf("generation %d did not commit: %+v", cur, res)
	}
	if !slices.Equal(res.Lapsed, []peer.ID{x}) {
		t.Fatalf("x must lapse at generation %d: %+v", cur, res)
	}
	// 1 goes by the bound; 2..cur-1 by G4 as soon as x no longer holds them
	// (a now has a margin in cur, x holding its share; b and c have none
	// in any retained generation, so their newest escrow, cur, counts).
	if want := []uint64{1, 2, 3, 4}; !slices.Equal(res.Retired, want) {
		t.Fatalf("retired %v, want %v", res.Retired, want)
	}
	m, _ := h.l.Member(x)
	wantReason := "lapsed: its newest escrowed generation 1 was retired by the retention bound (max 3 generations behind)"
	if m.Status != StatusLapsed || m.Reason != wantReason || m.LapsedGeneration != 1 || m.LapsedThrough != cur || m.LapsedAt.IsZero() {
		t.Fatalf("lapsed member: %+v", m)
	}
	if g1, _ := h.l.Generation(1); g1.State != StateRetired || g1.Receipts != 0 {
		t.Fatalf("generation 1: %+v", g1)
	}
	assertNothingServable(t, h.l, x, ids)
	// What x holds for others it keeps, and may serve (it is not
	// distrusted); it still counts for a's escrow.
	if err := h.l.ServeAllowed(cur, a, x); err != nil || !h.l.EnvelopeLive(cur, a, x) || !slices.Contains(h.l.Coverage(a).Holders, x) {
		t.Fatalf("a lapsed holder keeps what it holds: %v", err)
	}
	if !errors.Is(h.l.ServeAllowed(cur, x, a), ErrOwnerLapsed) {
		t.Fatalf("ServeAllowed(lapsed owner) = %v", h.l.ServeAllowed(cur, x, a))
	}
	if cov := h.l.Coverage(x); cov.CanUnlock || cov.Generation != 0 {
		t.Fatalf("lapsed coverage: %+v", cov)
	}
	if _, ok := h.l.KeyCheck(x); ok {
		t.Fatal("key check of a lapsed member must be dropped")
	}
	d := h.l.Duties(a)
	if len(d.DeleteLapsedOwners) != 1 || d.DeleteLapsedOwners[0] != (LapsedOwner{Owner: x, Through: cur}) || len(d.DeleteOwners) != 0 {
		t.Fatalf("sweep duties: %+v", d)
	}
	if dx := h.l.Duties(x); dx.Open != 0 || dx.Current != 0 || dx.NeedsKeyCheck || !slices.Equal(dx.DeleteGenerations, []uint64{1, 2, 3, 4}) {
		t.Fatalf("duties of lapsed x: %+v", dx)
	}
	for _, g := range h.l.Generations()[:cur-1] {
		if g.State != StateRetired {
			t.Fatalf("a lapsed member holds nothing back, yet %d is %s", g.Number, g.State)
		}
	}

	// x comes back: it must be invited again, and joins like a new peer.
	inv := joinWithDeadline(h, a, x, 300, time.Minute)
	g, _ := h.l.Open()
	if inv.Opened != cur+1 || !slices.Equal(g.Joiners, []peer.ID{x}) || len(g.Members) != 4 {
		t.Fatalf("rejoin: %+v %+v", inv, g)
	}
	if _, err := h.apply(NewRecordReceipts([]Receipt{signed(t, testCluster, cur, x, a, digestOf(cur, x, a))}, h.tick())); !errors.Is(err, ErrNotActive) {
		t.Fatalf("a rejoining peer escrows in its new generation, not the old one: %v", err)
	}
	res = h.must(NewRecordReceipts(h.fullReceipts(g.Number, g.Members), h.tick()))
	if res.Committed != g.Number || !slices.Equal(res.Admitted, []peer.ID{x}) || !slices.Equal(res.Retired, []uint64{cur}) {
		t.Fatalf("rejoin commit: %+v", res)
	}
	if cov := h.l.Coverage(x); !cov.CanUnlock || cov.Generation != g.Number {
		t.Fatalf("rejoined coverage: %+v", cov)
	}
	if d := h.l.Duties(a); len(d.DeleteLapsedOwners) != 0 {
		t.Fatalf("a rejoined peer is no longer swept: %+v", d)
	}
	checkReplay(t, h.log)
	for i := 1; i < len(h.log); i += 5 {
		checkRestoreAt(t, h.log, i)
	}
}

// TestRetentionBoundLargerKeepsEscrow: the same absence under a larger bound
// keeps x escrowed in its old generation; when it comes back and escrows in
// the current one, G4 retires the old ones. Lowering the bound afterwards
// (SetRetention) applies it at once.
func TestRetentionBoundLargerKeepsEscrow(t *testing.T) {
	for _, tc := range []struct {
		name  string
		back  bool   // x comes back and escrows in the current generation
		lower uint32 // then SetRetention(lower), 0 for none
	}{
		{"x comes back", true, 0},
		{"bound lowered while x is away", false, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ids := clusterWith(t, 4, 10)
			a, x := ids[0], ids[3]
			if h.l.Retention().MaxGenerationsBehind != 10 {
				t.Fatalf("retention %+v", h.l.Retention())
			}
			for range 4 {
				if res := commitRound(t, h, x); len(res.Lapsed)+len(res.Retired) != 0 {
					t.Fatalf("within the bound: %+v", res)
				}
			}
			cur, _ := h.l.Current()
			if m, _ := h.l.Member(x); m.Status != StatusActive {
				t.Fatalf("x: %+v", m)
			}
			if cov := h.l.Coverage(x); cov.Generation != 1 || cov.Behind != 4 || !cov.CanUnlock || h.l.ServeAllowed(1, x, a) != nil {
				t.Fatalf("x must still unlock with generation 1: %+v", cov)
			}
			var res Result
			if tc.back {
				res = h.must(NewRecordReceipts(h.fullReceipts(cur.Number, cur.Members), h.tick()))
				if len(res.Lapsed) != 0 || !slices.Equal(res.Retired, []uint64{1, 2, 3, 4}) {
					t.Fatalf("late escrow: %+v", res)
				}
				if cov := h.l.Coverage(x); cov.Generation != cur.Number || cov.Behind != 0 {
					t.Fatalf("caught up: %+v", cov)
				}
				return
			}
			res = h.must(NewSetRetention(tc.lower, a, h.tick()))
			if !slices.Equal(res.Lapsed, []peer.ID{x}) || !slices.Equal(res.Retired, []uint64{1, 2, 3, 4}) {
				t.Fatalf("lowered bound: %+v", res)
			}
			if m, _ := h.l.Member(x); m.Status != StatusLapsed || m.LapsedGeneration != 1 {
				t.Fatalf("x: %+v", m)
			}
			assertNothingServable(t, h.l, x, ids)
			checkReplay(t, h.log)
		})
	}
}

// TestRetentionCountsCommittedGenerations: aborted generations do not count
// toward the bound; nothing was re-shared in them.
func TestRetentionCountsCommittedGenerations(t *testing.T) {
	h, ids := clusterWith(t, 4, 2)
	x := ids[3]
	commitRound(t, h, x) // 2
	h.must(NewOpenGeneration(h.now.Add(time.Minute), h.tick()))
	h.now = h.now.Add(time.Hour)
	h.must(NewAbortGeneration(3, h.now))
	if res := commitRound(t, h, x); res.Committed != 4 || len(res.Lapsed) != 0 {
		t.Fatalf("1 is 2 committed generations behind 4, within the bound: %+v", res)
	}
	if cov := h.l.Coverage(x); cov.Generation != 1 || cov.Behind != 2 {
		t.Fatalf("coverage: %+v", cov)
	}
	if res := commitRound(t, h, x); !slices.Equal(res.Lapsed, []peer.ID{x}) {
		t.Fatalf("the next commit crosses the bound: %+v", res)
	}
}

// TestSetRetentionNeverLapsesEveryone builds a state in which every active
// member is escrowed only in generation 1 (the holder they all relied on in
// 2 and 3 was removed), and checks that a bound lapsing all of them is
// refused.
func TestSetRetentionNeverLapsesEveryone(t *testing.T) {
	h, ids := cluster(t, 4)
	a, b, c, r := ids[0], ids[1], ids[2], ids[3]
	for n := uint64(2); n <= 3; n++ {
		h.must(NewOpenGeneration(h.now.Add(time.Minute), h.tick()))
		var rs []Receipt
		for _, o := range []peer.ID{a, b, c} {
			for _, hd := range []peer.ID{o, r, next(o, a, b, c)} {
				rs = append(rs, signed(t, testCluster, n, o, hd, digestOf(n, o, hd)))
			}
		}
		if res := h.must(NewRecordReceipts(rs, h.tick())); res.Committed != n {
			t.Fatalf("generation %d: %+v", n, res)
		}
	}
	h.must(NewRemoveMember(r, h.now.Add(time.Minute), h.tick()))
	h.now = h.now.Add(time.Hour)
	h.must(NewAbortGeneration(4, h.now))
	for _, p := range []peer.ID{a, b, c} {
		if cov := h.l.Coverage(p); cov.Generation != 1 || cov.Behind != 2 {
			t.Fatalf("coverage of %s: %+v", p, cov)
		}
	}
	before, _ := h.l.Snapshot()
	if _, err := h.apply(NewSetRetention(1, a, h.tick())); !errors.Is(err, ErrLastMember) {
		t.Fatalf("SetRetention(1) = %v, want ErrLastMember", err)
	}
	if after, _ := h.l.Snapshot(); !bytes.Equal(before, after) {
		t.Fatal("refused SetRetention changed the state")
	}
	if res := h.must(NewSetRetention(2, a, h.tick())); len(res.Lapsed)+len(res.Retired) != 0 {
		t.Fatalf("a bound of 2 keeps generation 1: %+v", res)
	}
}

// next returns the member after o in the cycle ps.
func next(o peer.ID, ps ...peer.ID) peer.ID {
	i := slices.Index(ps, o)
	return ps[(i+1)%len(ps)]
}

// lapseEnv: a committed cluster (a, b, c, x) bootstrapped with a bound of
// 1, where x was away for generations 2 and 3 and lapsed at 3; e is a
// stranger and invite 50 (by a) is unused.
type lapseEnv struct {
	h             *harness
	a, b, c, x, e peer.ID
}

func newLapseEnv(t *testing.T) *lapseEnv {
	h, ids := clusterWith(t, 4, 1)
	env := &lapseEnv{h: h, a: ids[0], b: ids[1], c: ids[2], x: ids[3], e: keys(t, 6)[5].id}
	commitRound(t, h, env.x)
	if res := commitRound(t, h, env.x); !slices.Equal(res.Lapsed, []peer.ID{env.x}) {
		t.Fatalf("x must lapse at 3: %+v", res)
	}
	h.must(NewAddInvite(inviteHash(50), invitePub(50), h.now.Add(time.Hour), env.a, h.tick()))
	return env
}

// TestLapsedTransitions: what a lapsed member can become.
func TestLapsedTransitions(t *testing.T) {
	cases := []struct {
		name string
		cmd  func(env *lapseEnv) *pb.Command
		want MemberStatus
		res  func(t *testing.T, env *lapseEnv, res Result)
	}{
		{"invited again, through a generation", func(env *lapseEnv) *pb.Command {
			return NewConsumeInvite(inviteHash(50), env.x, testCluster, env.h.now.Add(time.Hour), env.h.tick())
		}, StatusJoining, func(t *testing.T, env *lapseEnv, res Result) {
			if g, _ := env.h.l.Open(); res.Opened != 4 || !slices.Equal(g.Joiners, []peer.ID{env.x}) {
				t.Fatalf("%+v", res)
			}
		}},
		{"removed for good", func(env *lapseEnv) *pb.Command {
			return NewRemoveMember(env.x, env.h.now.Add(time.Hour), env.h.tick())
		}, StatusRemoved, func(t *testing.T, env *lapseEnv, res Result) {
			if _, err := env.h.apply(NewConsumeInvite(inviteHash(50), env.x, testCluster, time.Time{}, env.h.tick())); !errors.Is(err, ErrMemberRemoved) {
				t.Fatalf("a removed peer cannot rejoin: %v", err)
			}
		}},
		{"raising the bound brings nothing back", func(env *lapseEnv) *pb.Command {
			return NewSetRetention(5, env.a, env.h.tick())
		}, StatusLapsed, func(t *testing.T, env *lapseEnv, res Result) {
			if env.h.l.Retention().MaxGenerationsBehind != 5 || len(res.Retired)+len(res.Lapsed) != 0 {
				t.Fatalf("%+v", res)
			}
			if g1, _ := env.h.l.Generation(1); g1.State != StateRetired {
				t.Fatal("retired is terminal")
			}
		}},
		{"a new generation leaves it out", func(env *lapseEnv) *pb.Command {
			return NewOpenGeneration(env.h.now.Add(time.Hour), env.h.tick())
		}, StatusLapsed, func(t *testing.T, env *lapseEnv, res Result) {
			if g, _ := env.h.l.Open(); len(g.Members) != 3 || slices.Contains(g.Members, env.x) || !slices.Contains(g.Removals, env.x) {
				t.Fatalf("%+v", g)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newLapseEnv(t)
			res := env.h.must(tc.cmd(env))
			if m, _ := env.h.l.Member(env.x); m.Status != tc.want {
				t.Fatalf("status %s, want %s", m.Status, tc.want)
			}
			tc.res(t, env, res)
		})
	}
}

// TestRetentionRejections: every new rejection has its sentinel, and a
// rejected command changes nothing.
func TestRetentionRejections(t *testing.T) {
	dl := func(env *lapseEnv) time.Time { return env.h.now.Add(time.Hour) }
	sig := func(env *lapseEnv, gen uint64, o, hd peer.ID) Receipt {
		return signed(env.h.tb, testCluster, gen, o, hd, digestOf(gen, o, hd))
	}
	cases := []struct {
		name string
		prep func(env *lapseEnv)
		cmd  func(env *lapseEnv) *pb.Command
		want error
	}{
		// Validation.
		{"bound zero", nil, func(env *lapseEnv) *pb.Command { return NewSetRetention(0, env.a, env.h.tick()) }, ErrBadRetention},
		{"bound absurd", nil, func(env *lapseEnv) *pb.Command {
			return NewSetRetention(MaxGenerationsBehindLimit+1, env.a, env.h.tick())
		}, ErrBadRetention},
		{"bootstrap bound absurd", nil, func(env *lapseEnv) *pb.Command {
			return NewBootstrapWithRetention(testCluster, env.e, MaxGenerationsBehindLimit+1, env.h.tick())
		}, ErrBadRetention},
		{"setter not a peer ID", nil, func(env *lapseEnv) *pb.Command { return NewSetRetention(2, "nope", env.h.tick()) }, ErrBadPeerID},

		// Who may set it.
		{"set by stranger", nil, func(env *lapseEnv) *pb.Command { return NewSetRetention(2, env.e, env.h.tick()) }, ErrNotMember},
		{"set by lapsed", nil, func(env *lapseEnv) *pb.Command { return NewSetRetention(2, env.x, env.h.tick()) }, ErrMemberLapsed},
		{"set by joiner", func(env *lapseEnv) {
			env.h.must(NewConsumeInvite(inviteHash(50), env.e, testCluster, dl(env), env.h.tick()))
		}, func(env *lapseEnv) *pb.Command { return NewSetRetention(2, env.e, env.h.tick()) }, ErrNotActive},
		{"set by removed", func(env *lapseEnv) {
			env.h.must(NewRemoveMember(env.c, dl(env), env.h.tick()))
		}, func(env *lapseEnv) *pb.Command { return NewSetRetention(2, env.c, env.h.tick()) }, ErrMemberRemoved},
		{"lower while a generation is open", func(env *lapseEnv) {
			env.h.must(NewSetRetention(4, env.a, env.h.tick()))
			env.h.must(NewOpenGeneration(dl(env), env.h.tick()))
		}, func(env *lapseEnv) *pb.Command { return NewSetRetention(3, env.a, env.h.tick()) }, ErrGenerationOpen},

		// What a lapsed member can no longer do.
		{"lapsed issues invite", nil, func(env *lapseEnv) *pb.Command {
			return NewAddInvite(inviteHash(60), invitePub(60), dl(env), env.x, env.h.tick())
		}, ErrMemberLapsed},
		{"lapsed sets addrs", nil, func(env *lapseEnv) *pb.Command {
			return NewSetAddrs(env.x, []string{"/dns/x"}, env.h.tick())
		}, ErrMemberLapsed},
		{"lapsed records key check", nil, func(env *lapseEnv) *pb.Command {
			return NewRecordKeyCheck(env.x, []byte("kc"), env.h.tick())
		}, ErrMemberLapsed},
		{"receipt of lapsed owner", nil, func(env *lapseEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{sig(env, 3, env.x, env.a)}, env.h.tick())
		}, ErrMemberLapsed}, // the owner authors its receipts, and a lapsed member may author none
		{"receipt by lapsed holder", nil, func(env *lapseEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{sig(env, 3, env.a, env.x)}, env.h.tick())
		}, ErrHolderLapsed},
		{"rejoining peer escrows in the old generation", func(env *lapseEnv) {
			env.h.must(NewConsumeInvite(inviteHash(50), env.x, testCluster, dl(env), env.h.tick()))
		}, func(env *lapseEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{sig(env, 3, env.x, env.a)}, env.h.tick())
		}, ErrNotActive},
		{"lapsed invited with direct admission", nil, func(env *lapseEnv) *pb.Command {
			return NewConsumeInvite(inviteHash(50), env.x, testCluster, time.Time{}, env.h.tick())
		}, ErrDirectAdmission},
		{"lapsed twice invited", func(env *lapseEnv) {
			env.h.must(NewConsumeInvite(inviteHash(50), env.x, testCluster, dl(env), env.h.tick()))
			env.h.must(NewAddInvite(inviteHash(51), invitePub(51), dl(env), env.a, env.h.tick()))
		}, func(env *lapseEnv) *pb.Command {
			return NewConsumeInvite(inviteHash(51), env.x, testCluster, time.Time{}, env.h.tick())
		}, ErrAlreadyMember},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newLapseEnv(t)
			if tc.prep != nil {
				tc.prep(env)
			}
			before, _ := env.h.l.Snapshot()
			c := tc.cmd(env)
			env.h.sign(c, env.h.naturalAuthor(c))
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			_, err = env.h.l.Apply(env.h.now.UnixNano(), b)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if code := ErrorCode(err); ErrorByCode(code) != tc.want {
				t.Fatalf("code %q does not map back to %v", code, tc.want)
			}
			if after, _ := env.h.l.Snapshot(); !bytes.Equal(before, after) {
				t.Fatal("rejected command changed the state")
			}
		})
	}
}

// TestRetentionSnapshot: the policy and the lapsed status survive a
// snapshot; a snapshot from before the policy existed restores with the
// default.
func TestRetentionSnapshot(t *testing.T) {
	env := newLapseEnv(t)
	snap, err := env.h.l.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	r := New()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if r.Retention().MaxGenerationsBehind != 1 {
		t.Fatalf("restored retention %+v", r.Retention())
	}
	want, _ := env.h.l.Member(env.x)
	if got, _ := r.Member(env.x); got.Status != StatusLapsed || got.Reason != want.Reason || got.LapsedThrough != want.LapsedThrough || !got.LapsedAt.Equal(want.LapsedAt) {
		t.Fatalf("restored lapsed member: %+v", got)
	}

	var old pb.Snapshot
	if err := proto.Unmarshal(snap, &old); err != nil {
		t.Fatal(err)
	}
	old.MaxGenerationsBehind = 0
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&old)
	if err := r.Restore(b); err != nil || r.Retention().MaxGenerationsBehind != DefaultMaxGenerationsBehind {
		t.Fatalf("pre-retention snapshot: %v %+v", err, r.Retention())
	}
	old.MaxGenerationsBehind = MaxGenerationsBehindLimit + 1
	b, _ = proto.MarshalOptions{Deterministic: true}.Marshal(&old)
	if err := r.Restore(b); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("absurd bound in snapshot: %v", err)
	}
	// A lapsed owner with a receipt is not a state the ledger can reach.
	old.MaxGenerationsBehind = 1
	g3 := old.Generations[2]
	g3.Receipts = append(g3.Receipts, &pb.StoredReceipt{Owner: []byte(env.x), Holder: []byte(env.a), Digest: make([]byte, 32), Signature: []byte{1}})
	slices.SortFunc(g3.Receipts, func(p, q *pb.StoredReceipt) int { return bytes.Compare(p.Owner, q.Owner) })
	b, _ = proto.MarshalOptions{Deterministic: true}.Marshal(&old)
	if err := r.Restore(b); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("receipt of a lapsed owner in snapshot: %v", err)
	}
}

// TestLapseGraceKeepsARestartingMember is issue 12's "a member restarting
// during a burst of generations lapses": with a bound of 1, x is away while
// three generations commit within a minute. It stays active and able to
// unlock with its generation 1 (kept past the bound by LapseGrace), comes
// back, escrows in the current generation and never lapses. A second absence
// that outlasts the grace lapses it at the first command after the grace.
func TestLapseGraceKeepsARestartingMember(t *testing.T) {
	h, ids := clusterWith(t, 4, 1)
	a, x := ids[0], ids[3]
	burst := func() (res Result) {
		h.must(NewOpenGeneration(h.now.Add(time.Hour), h.tick()))
		g, _ := h.l.Open()
		return h.must(NewRecordReceipts(h.fullReceipts(g.Number, slices.DeleteFunc(slices.Clone(g.Members), func(p peer.ID) bool { return p == x })), h.tick()))
	}
	for range 3 {
		if res := burst(); len(res.Lapsed) != 0 {
			t.Fatalf("x lapsed within its grace: %+v", res)
		}
	}
	if m, _ := h.l.Member(x); m.Status != StatusActive {
		t.Fatalf("x is %s within its grace", m.Status)
	}
	if cov := h.l.Coverage(x); cov.Generation != 1 || !cov.CanUnlock {
		t.Fatalf("x cannot unlock with generation 1 within its grace: %+v", cov)
	}
	// x is back: it escrows late in the current generation (G5), which
	// releases generation 1.
	cur, _ := h.l.Current()
	var late []Receipt
	for _, hd := range cur.Members {
		late = append(late, signed(t, testCluster, cur.Number, x, hd, digestOf(cur.Number, x, hd)))
	}
	res := h.must(NewRecordReceipts(late, h.tick()))
	if cov := h.l.Coverage(x); cov.Generation != cur.Number || !slices.Contains(res.Retired, 1) {
		t.Fatalf("x's late escrow: coverage %+v, result %+v", cov, res)
	}

	// Away again, for longer than the grace.
	burst()
	burst()
	if m, _ := h.l.Member(x); m.Status != StatusActive {
		t.Fatalf("x is %s within its grace", m.Status)
	}
	h.now = h.now.Add(LapseGrace)
	res = h.must(NewRecordKeyCheck(a, []byte("kc-a"), h.tick()))
	if !slices.Equal(res.Lapsed, []peer.ID{x}) {
		t.Fatalf("x must lapse at the first command after its grace: %+v", res)
	}
	assertNothingServable(t, h.l, x, ids)
}

// Newest is the highest-numbered generation in any state.
func TestNewest(t *testing.T) {
	h := newHarness(t)
	if _, ok := h.l.Newest(); ok {
		t.Fatal("an empty ledger has a newest generation")
	}
	h2, ids := cluster(t, 3)
	commitRound(t, h2)
	h2.must(NewOpenGeneration(h2.now.Add(time.Hour), h2.tick()))
	g, ok := h2.l.Newest()
	cur, _ := h2.l.Current()
	if !ok || g.State != StateOpen || g.Number != cur.Number+1 || len(g.Members) != len(ids) {
		t.Fatalf("newest %+v (ok %v), current %d", g, ok, cur.Number)
	}
}
