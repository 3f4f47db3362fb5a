package generations

import (
	"bytes"
	"errors"
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pkey/p2pkey/generations/pb"
)

// authEnv is a committed 5-member cluster (a..e) and a stranger x.
type authEnv struct {
	h             *harness
	a, b, c, d, e peer.ID
	x             peer.ID
}

func newAuthEnv(t *testing.T) *authEnv {
	h, ids := cluster(t, 5)
	return &authEnv{h: h, a: ids[0], b: ids[1], c: ids[2], d: ids[3], e: ids[4], x: keys(t, 6)[5].id}
}

// TestForgedCommandsRefused: one member (or a stranger) with its real
// identity tries to act for others, to bend time, to replay, to forge. Each
// attempt is refused with its sentinel and changes nothing.
func TestForgedCommandsRefused(t *testing.T) {
	dl := func(env *authEnv) time.Time { return env.h.now.Add(time.Hour) }
	cases := []struct {
		name   string
		author func(env *authEnv) peer.ID
		cmd    func(env *authEnv) *pb.Command
		// stamp is the leader's clock for the entry; zero means issued_at.
		stamp func(env *authEnv) time.Time
		want  error
	}{
		{"invite in another's name", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command {
				return NewAddInvite(inviteHash(70), invitePub(70), dl(env), env.b, env.h.tick())
			}, nil, ErrNotAuthor},
		{"invite valid for 50 years", func(env *authEnv) peer.ID { return env.b },
			func(env *authEnv) *pb.Command {
				return NewAddInvite(inviteHash(70), invitePub(70), env.h.now.Add(50*365*24*time.Hour), env.b, env.h.tick())
			}, nil, ErrInviteTTL},
		{"addresses for the leader", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command {
				return NewSetAddrs(env.a, []string{"/ip4/6.6.6.6/tcp/1"}, env.h.tick())
			},
			nil, ErrNotAuthor},
		{"retention in another's name", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command { return NewSetRetention(1, env.a, env.h.tick()) }, nil, ErrNotAuthor},
		{"key check for another owner", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command { return NewRecordKeyCheck(env.b, []byte("kc"), env.h.tick()) }, nil, ErrNotAuthor},
		{"receipts for another owner", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command {
				return NewRecordReceipts([]Receipt{signed(t, testCluster, 1, env.b, env.d, digestOf(1, env.b, env.d))}, env.h.tick())
			}, nil, ErrNotAuthor},
		{"remove another at once", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command { return NewRemoveMember(env.a, dl(env), env.h.tick()) }, nil, ErrNotAuthor},
		{"stranger votes", func(env *authEnv) peer.ID { return env.x },
			func(env *authEnv) *pb.Command { return NewVote(env.a, false, dl(env), env.h.tick()) }, nil, ErrNotMember},
		{"vote on itself", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command { return NewVote(env.c, false, dl(env), env.h.tick()) }, nil, ErrSelfVote},
		{"reinstate a member that is not suspended", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command { return NewVote(env.a, true, dl(env), env.h.tick()) }, nil, ErrNotSuspended},
		{"clock 2h ahead", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command {
				return NewOpenGeneration(env.h.now.Add(3*time.Hour), env.h.now.Add(2*time.Hour))
			},
			func(env *authEnv) time.Time { return env.h.now }, ErrClockSkew},
		{"clock 2h behind", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command {
				return NewOpenGeneration(env.h.now.Add(-time.Hour), env.h.now.Add(-2*time.Hour))
			},
			func(env *authEnv) time.Time { return env.h.now }, ErrClockSkew},
		{"deadline beyond the bound", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command { return NewOpenGeneration(env.h.now.Add(10*time.Hour), env.h.now) }, nil, ErrBadTimeout},
		{"consume with deadline 0 after bootstrap", func(env *authEnv) peer.ID { return env.x },
			func(env *authEnv) *pb.Command {
				env.h.must(NewAddInvite(inviteHash(71), invitePub(71), dl(env), env.a, env.h.tick()))
				return NewConsumeInvite(inviteHash(71), env.x, testCluster, time.Time{}, env.h.tick())
			}, nil, ErrDirectAdmission},
		{"consume without the invite secret", func(env *authEnv) peer.ID { return env.x },
			func(env *authEnv) *pb.Command {
				env.h.must(NewAddInvite(inviteHash(72), invitePub(72), dl(env), env.a, env.h.tick()))
				c := NewConsumeInvite(inviteHash(72), env.x, testCluster, dl(env), env.h.tick())
				_, wrong, _ := InviteKey([]byte("a guess"))
				if err := ProveInvite(c, testCluster, wrong); err != nil {
					t.Fatal(err)
				}
				return c
			}, nil, ErrBadInviteProof},
		{"consume for another joiner", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command {
				env.h.must(NewAddInvite(inviteHash(73), invitePub(73), dl(env), env.a, env.h.tick()))
				return NewConsumeInvite(inviteHash(73), env.x, testCluster, dl(env), env.h.tick())
			}, nil, ErrNotAuthor},
		{"abort a fresh generation before its deadline", func(env *authEnv) peer.ID { return env.c },
			func(env *authEnv) *pb.Command {
				env.h.must(NewAddInvite(inviteHash(74), invitePub(74), dl(env), env.a, env.h.tick()))
				env.h.must(NewConsumeInvite(inviteHash(74), env.x, testCluster, dl(env), env.h.tick()))
				return NewAbortGeneration(2, env.h.tick())
			}, nil, ErrDeadlineNotReached},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newAuthEnv(t)
			cmd := tc.cmd(env)
			before, _ := env.h.l.Snapshot()
			env.h.sign(cmd, tc.author(env))
			stamp := cmd.GetIssuedAt()
			if tc.stamp != nil {
				stamp = tc.stamp(env).UnixNano()
			}
			b, err := EncodeCommand(cmd)
			if err == nil {
				_, err = env.h.l.Apply(stamp, b)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if ErrorByCode(ErrorCode(err)) != tc.want {
				t.Fatalf("code %q does not map back", ErrorCode(err))
			}
			if after, _ := env.h.l.Snapshot(); !bytes.Equal(before, after) {
				t.Fatal("a refused command changed the ledger")
			}
		})
	}
}

func TestReplayAndSignature(t *testing.T) {
	env := newAuthEnv(t)
	h := env.h
	cmd := NewSetAddrs(env.b, []string{"/ip4/127.0.0.1/tcp/1"}, h.tick())
	h.sign(cmd, env.b)
	data, _ := EncodeCommand(cmd)
	if _, err := h.l.Apply(cmd.GetIssuedAt(), data); err != nil {
		t.Fatal(err)
	}
	if _, err := h.l.Apply(h.tick().UnixNano(), data); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay: %v", err)
	}
	// An older sequence number is a reordering: refused as well.
	old := NewSetAddrs(env.b, []string{"/ip4/127.0.0.1/tcp/2"}, h.tick())
	if err := Sign(old, keyOf(t, env.b), testCluster, cmd.GetSeq()-1); err != nil {
		t.Fatal(err)
	}
	if _, err := h.applySigned(old); !errors.Is(err, ErrReplay) {
		t.Fatalf("reordered: %v", err)
	}
	// A signature of another cluster does not verify here.
	other := NewSetAddrs(env.b, nil, h.tick())
	if err := Sign(other, keyOf(t, env.b), "ffffffffffffffffffffffffffffffff", cmd.GetSeq()+5); err != nil {
		t.Fatal(err)
	}
	if _, err := h.applySigned(other); !errors.Is(err, ErrBadCommandSignature) {
		t.Fatalf("other cluster: %v", err)
	}
	// A body changed after signing does not verify.
	changed := NewSetAddrs(env.b, nil, h.tick())
	h.sign(changed, env.b)
	changed.GetSetAddrs().Addrs = []string{"/ip4/6.6.6.6/tcp/1"}
	if _, err := h.applySigned(changed); !errors.Is(err, ErrBadCommandSignature) {
		t.Fatalf("changed body: %v", err)
	}
}

// TestLedgerClockNeverGoesBackwards: a new leader with a slower clock
// cannot move deadlines or abort times backwards.
func TestLedgerClockNeverGoesBackwards(t *testing.T) {
	env := newAuthEnv(t)
	h := env.h
	last := h.l.Now()
	cmd := NewSetAddrs(env.c, nil, last.Add(-time.Minute))
	h.sign(cmd, env.c)
	data, _ := EncodeCommand(cmd)
	if _, err := h.l.Apply(last.Add(-time.Minute).UnixNano(), data); err != nil {
		t.Fatal(err)
	}
	if !h.l.Now().Equal(last) {
		t.Fatalf("clock went from %s to %s", last, h.l.Now())
	}
}

func TestRemovalByMajority(t *testing.T) {
	env := newAuthEnv(t)
	h := env.h
	dl := func() time.Time { return h.now.Add(time.Hour) }
	vote := func(author, target peer.ID, reinstate bool) Result {
		t.Helper()
		res, err := h.applyAs(author, NewVote(target, reinstate, dl(), h.tick()))
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// One vote suspends at once: e's envelopes are kept but not served.
	if res := vote(env.a, env.e, false); res.Suspended != env.e || res.Removed != "" {
		t.Fatalf("first vote: %+v", res)
	}
	m, _ := h.l.Member(env.e)
	if !m.Suspended || m.Status != StatusActive || m.VotesNeeded != 3 || len(m.RemoveVotes) != 1 {
		t.Fatalf("suspended member: %+v", m)
	}
	if err := h.l.ServeAllowed(1, env.e, env.b); !errors.Is(err, ErrOwnerSuspended) {
		t.Fatalf("serve to a suspended owner: %v", err)
	}
	if !h.l.EnvelopeLive(1, env.e, env.b) {
		t.Fatal("a suspended owner's envelopes must be kept")
	}
	if cov := h.l.Coverage(env.e); cov.CanUnlock || !cov.Suspended {
		t.Fatalf("coverage: %+v", cov)
	}
	// A suspended member cannot issue invites (a stolen box invites no
	// accomplice), and its invites stop working.
	if _, err := h.applyAs(env.e, NewAddInvite(inviteHash(80), invitePub(80), dl(), env.e, h.tick())); !errors.Is(err, ErrMemberSuspended) {
		t.Fatalf("invite by suspended: %v", err)
	}
	// The same voter again does not count twice.
	vote(env.a, env.e, false)
	// Reinstate: a majority (3 of the 4 others) lifts it.
	vote(env.b, env.e, true)
	vote(env.c, env.e, true)
	if m, _ := h.l.Member(env.e); !m.Suspended {
		t.Fatal("two reinstate votes of 3 needed lifted the suspension")
	}
	if res := vote(env.d, env.e, true); res.Reinstated != env.e {
		t.Fatalf("third reinstate vote: %+v", res)
	}
	if err := h.l.ServeAllowed(1, env.e, env.b); err != nil {
		t.Fatalf("reinstated owner is served: %v", err)
	}
	// Removal: a majority of the others, each vote once.
	vote(env.a, env.e, false)
	vote(env.b, env.e, false)
	if m, _ := h.l.Member(env.e); m.Status != StatusActive {
		t.Fatalf("2 of 3 votes made it final: %+v", m)
	}
	res := vote(env.c, env.e, false)
	if res.Removed != env.e || res.Opened == 0 {
		t.Fatalf("final vote: %+v", res)
	}
	if m, _ := h.l.Member(env.e); m.Status != StatusRemoved {
		t.Fatalf("removed: %+v", m)
	}
	if _, ok := h.l.ReceiptDigest(1, env.e, env.b); ok {
		t.Fatal("a removed owner's receipts must be gone")
	}
	// A suspended member can still vote (its suspension is not a verdict),
	// but no single member ever finalizes a removal of another.
	env2 := newAuthEnv(t)
	h = env2.h
	for _, target := range []peer.ID{env2.b, env2.c, env2.d, env2.e} {
		if _, err := h.applyAs(env2.a, NewVote(target, false, dl(), h.tick())); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []peer.ID{env2.b, env2.c, env2.d, env2.e} {
		if m, _ := h.l.Member(p); m.Status != StatusActive || !m.Suspended {
			t.Fatalf("one member's votes: %+v", m)
		}
	}
	for _, target := range []peer.ID{env2.b, env2.c, env2.d} {
		for _, voter := range []peer.ID{env2.b, env2.c, env2.d, env2.e} {
			if voter == target {
				continue
			}
			if _, err := h.applyAs(voter, NewVote(target, true, dl(), h.tick())); err != nil && !errors.Is(err, ErrNotSuspended) {
				t.Fatal(err)
			}
		}
		if m, _ := h.l.Member(target); m.Suspended {
			t.Fatalf("the others could not reinstate %s: %+v", target, m)
		}
	}
}

// TestStalledJoinAborts: a joiner that records nothing for
// JoinProgressTimeout lets any active member abort its generation early; a
// joiner may give up at once.
func TestStalledJoinAborts(t *testing.T) {
	env := newAuthEnv(t)
	h := env.h
	h.must(NewAddInvite(inviteHash(90), invitePub(90), h.now.Add(time.Hour), env.a, h.tick()))
	res := h.must(NewConsumeInvite(inviteHash(90), env.x, testCluster, h.now.Add(time.Hour), h.tick()))
	g := res.Opened
	if _, err := h.applyAs(env.b, NewAbortGeneration(g, h.tick())); !errors.Is(err, ErrDeadlineNotReached) {
		t.Fatalf("early abort: %v", err)
	}
	h.now = h.now.Add(JoinProgressTimeout)
	if res, err := h.applyAs(env.b, NewAbortGeneration(g, h.tick())); err != nil || res.Aborted != g {
		t.Fatalf("abort of a stalled join: %+v %v", res, err)
	}
	if m, _ := h.l.Member(env.x); m.Status != StatusRejected {
		t.Fatalf("stalled joiner: %+v", m)
	}
	// A joiner gives up at once.
	y := keys(t, 7)[6].id
	h.must(NewAddInvite(inviteHash(91), invitePub(91), h.now.Add(time.Hour), env.a, h.tick()))
	g = h.must(NewConsumeInvite(inviteHash(91), y, testCluster, h.now.Add(time.Hour), h.tick())).Opened
	if res, err := h.applyAs(y, NewAbortGeneration(g, h.tick())); err != nil || res.Aborted != g {
		t.Fatalf("joiner gives up: %+v %v", res, err)
	}
}

// TestNoGenerationOfOne: a cluster of one is unescrowed; the first join
// makes the first generation, of two.
func TestNoGenerationOfOne(t *testing.T) {
	h := newHarness(t)
	ks := keys(t, 2)
	h.must(NewBootstrap(testCluster, ks[0].id, h.tick()))
	if _, err := h.apply(NewOpenGeneration(h.now.Add(time.Hour), h.tick())); !errors.Is(err, ErrTooFewMembers) {
		t.Fatalf("open with one member: %v", err)
	}
	h.must(NewAddInvite(inviteHash(1), invitePub(1), h.now.Add(time.Hour), ks[0].id, h.tick()))
	res := h.must(NewConsumeInvite(inviteHash(1), ks[1].id, testCluster, h.now.Add(time.Minute), h.tick()))
	g, ok := h.l.Open()
	if res.Opened != 1 || !ok || len(g.Members) != 2 || g.Threshold != 2 {
		t.Fatalf("first join: %+v %+v", res, g)
	}
}

// TestSplitsNeverMix is the property: whatever receipts of several splits
// an owner records, in any order, it counts as escrowed only when one split
// alone has t receipts, and an escrowed split is never replaced.
func TestSplitsNeverMix(t *testing.T) {
	for seed := int64(0); seed < 30; seed++ {
		rng := rand.New(rand.NewSource(seed))
		h := newHarness(t)
		ks := keys(t, 5)
		ids := make([]peer.ID, len(ks))
		for i, k := range ks {
			ids[i] = k.id
		}
		h.must(NewBootstrap(testCluster, ids[0], h.tick()))
		for i := 1; i < len(ids); i++ {
			h.must(NewAddInvite(inviteHash(i), invitePub(i), h.now.Add(time.Hour), ids[0], h.tick()))
			h.must(NewConsumeInvite(inviteHash(i), ids[i], testCluster, time.Time{}, h.tick()))
		}
		h.must(NewOpenGeneration(h.now.Add(time.Hour), h.tick()))
		owner := ids[rng.Intn(len(ids))]
		splits := []SplitID{{1}, {2}, {3}}
		// recorded[split] is the set of holders with a receipt of that
		// split, as the test sees them.
		var escrowedWith *SplitID
		for step := 0; step < 40; step++ {
			sp := splits[rng.Intn(len(splits))]
			var rs []Receipt
			for _, hd := range ids {
				if rng.Intn(3) == 0 {
					d := digestOf(uint64(sp[0])*100+1, owner, hd)
					rs = append(rs, signedSplit(t, testCluster, 1, owner, hd, sp, d))
				}
			}
			if len(rs) == 0 {
				continue
			}
			_, err := h.apply(NewRecordReceipts(rs, h.tick()))
			e := h.l.Coverage(owner)
			var esc *Escrow
			for i := range e.Live {
				if e.Live[i].Generation == 1 {
					esc = &e.Live[i]
				}
			}
			if escrowedWith != nil {
				if sp != *escrowedWith && !errors.Is(err, ErrSplitMismatch) {
					t.Fatalf("seed %d: an escrowed split was replaced: %v", seed, err)
				}
				if esc == nil || esc.Split != *escrowedWith || !esc.Escrowed {
					t.Fatalf("seed %d: escrow changed: %+v", seed, esc)
				}
				continue
			}
			if err != nil && !errors.Is(err, ErrSplitMismatch) && !errors.Is(err, ErrDuplicateReceipt) {
				t.Fatal(err)
			}
			if esc != nil && esc.Escrowed {
				// Every recorded receipt is of one split, which is the
				// split of this escrow.
				for _, hd := range esc.Holders {
					if sp2, _ := h.l.Split(1, owner); sp2 != esc.Split || !slices.Contains(ids, hd) {
						t.Fatalf("seed %d: mixed splits", seed)
					}
				}
				s := esc.Split
				escrowedWith = &s
			}
		}
	}
}
