package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/internal/testkit"
	"github.com/p2pkey/p2pkey/node/pb"
	"github.com/p2pkey/p2pkey/p2p"
	"github.com/p2pkey/p2pkey/shares"
	"github.com/p2pkey/p2pkey/wire"
)

// Attacks on the changes of issue 12 and 13 to the resumed join, the
// restart that unlocks ahead of its ledger, the key-check wipe, the split
// replacement on a fresh ledger and the lapse grace. Real nodes on real
// libp2p hosts; the adversary speaks the protocols with its own identity.

// sendJoin sends one join request carrying cmd from h to member over the
// join protocol and returns the member's answer.
func sendJoin(t testing.TB, h host.Host, member *Node, cmd []byte) *pb.JoinResponse {
	t.Helper()
	h.Peerstore().AddAddrs(member.ID(), member.host.Addrs(), time.Hour)
	req := &pb.JoinRequest{Version: joinVersion, ClusterId: member.ClusterID(), Command: cmd, Addrs: p2p.AddrInfoStrings(h)}
	resp, err := wire.Call[pb.JoinResponse](ctxT(t, 20*time.Second), h, member.ID(), joinProto, req)
	if err != nil {
		t.Fatalf("join request to %s: %v", member.ID(), err)
	}
	return resp
}

// wantJoinRefused fails unless resp is a refusal that tells the asker
// nothing about the cluster (no members, no leader, not admitted).
func wantJoinRefused(t testing.TB, what string, resp *pb.JoinResponse) {
	t.Helper()
	switch {
	case resp.GetErrorCode() == "":
		t.Errorf("%s: answered (admitted=%v, %d members, leader %q)", what, resp.GetAdmitted(), len(resp.GetMembers()), resp.GetLeader())
	case resp.GetAdmitted() || len(resp.GetMembers()) > 0 || len(resp.GetLeader()) > 0 || resp.GetOpened() != nil:
		t.Errorf("%s: refused (%s) but the refusal carries cluster state: %v", what, resp.GetErrorCode(), resp)
	default:
		t.Logf("%s: refused: %s: %s", what, resp.GetErrorCode(), resp.GetErrorMessage())
	}
}

// joinCmdOf is n's own signed ConsumeInvite for the invite it joined with
// (its cfg.Join): what a member sees when n resumes its join, and what an
// eavesdropper could capture.
func joinCmdOf(t testing.TB, n *Node) []byte {
	t.Helper()
	return joinCmdWith(t, n, n.cfg.Join)
}

// joinCmdWith is n's own signed ConsumeInvite for the invite token tok.
func joinCmdWith(t testing.TB, n *Node, tok string) []byte {
	t.Helper()
	inv, err := DecodeInvite(tok)
	if err != nil {
		t.Fatalf("invite of %s: %v", n.ID(), err)
	}
	cmd, err := n.joinCommand(inv)
	if err != nil {
		t.Fatal(err)
	}
	return cmd
}

// Attack 1 (join.go resume). The resume answers an active member that
// presents its own consumed invite with the members and the leader. A
// stranger and another member replaying that member's signed join command
// are refused (the command's author must be the authenticated remote); the
// member itself asking again and again is rate limited; once removed, the
// member presenting its old consumed invite is refused and told nothing.
func TestAttack2ResumeReplayAndAbuse(t *testing.T) {
	nodes := testCluster(t, 4)
	a, b, c, j := nodes[0], nodes[1], nodes[2], nodes[3]
	cmd := joinCmdOf(t, j)

	// The control: j itself resumes and is answered as admitted, so the
	// refusals below are the identity check's doing.
	resp := sendJoin(t, j.host, b, cmd)
	if resp.GetErrorCode() != "" || !resp.GetAdmitted() || len(resp.GetMembers()) == 0 {
		t.Fatalf("the admitted member's own resume was not answered as admitted: %v", resp)
	}

	// A stranger replays j's command.
	key, _ := newKey(t)
	stranger, err := p2p.New(key, p2p.WithListenAddrs("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	wantJoinRefused(t, "a stranger replaying an admitted member's join command", sendJoin(t, stranger, b, cmd))
	// Another member replays it.
	wantJoinRefused(t, "another member replaying an admitted member's join command", sendJoin(t, c.host, b, cmd))

	// j asks again and again: the per-peer limit (burst 3, one per 2 s)
	// holds it, though the resume proposes nothing.
	answered, limited := 0, 0
	for range 8 {
		r := sendJoin(t, j.host, a, joinCmdOf(t, j))
		switch r.GetErrorCode() {
		case "":
			answered++
		case codeRateLimited:
			limited++
		default:
			t.Fatalf("resume refused otherwise: %s: %s", r.GetErrorCode(), r.GetErrorMessage())
		}
	}
	t.Logf("8 resumes in a row: %d answered, %d rate limited", answered, limited)
	if limited == 0 || answered > 4 {
		t.Errorf("8 resumes in a row: %d answered, %d rate limited; want at most the burst answered", answered, limited)
	}

	// Removed, j presents its old consumed invite again.
	removeByMajority(t, j.ID(), a, b, c)
	for _, m := range []*Node{b, c} {
		waitFor(t, "the removal to reach "+m.ID().String(), 10*time.Second, func() bool {
			return m.memberStatus(j.ID()) == generations.StatusRemoved
		})
		wantJoinRefused(t, "a removed member resuming with its consumed invite", sendJoin(t, j.host, m, joinCmdOf(t, j)))
	}
}

// cuttable returns a config edit with which a node refuses Raft (and the
// leader's forwarding and read index) between the peer in cut and everyone
// else, both ways, and applies extra to its hooks.
func cuttable(t testing.TB, cut *atomic.Value, extra func(self peer.ID, c *Config)) func(*Config) {
	return func(c *Config) {
		self := c.identityPeer(t)
		c.setHooks(&testHooks{raftDeny: func(p peer.ID) bool {
			x := cut.Load().(peer.ID)
			return x != "" && p != self && (p == x || self == x)
		}})
		if extra != nil {
			extra(self, c)
		}
	}
}

func cuttableCluster(t testing.TB, size int, edit func(*Config)) []*Node {
	t.Helper()
	cfg := testConfig(t)
	cfg.Bootstrap = true
	edit(&cfg)
	nodes := []*Node{startNode(t, cfg)}
	for range size - 1 {
		nodes = append(nodes, joinNodeWith(t, nodes[0], edit))
	}
	waitAgree(t, nodes, size)
	waitUnlocked(t, nodes...)
	waitFullCoverage(t, nodes)
	return nodes
}

func recheckAll(nodes ...*Node) {
	for _, n := range nodes {
		n.cons.Recheck()
	}
}

// Attacks 2 and 6 (unlock.go, keyring.go: K rebuilt ahead of the ledger
// reads as unlocked; the self-fetch that skips the Fresh check). X and a
// holder H are both down while a majority removes X. H restarts still cut
// off from the leader, so its ledger is the stale one from its disk; X
// restarts with its old data and can reach H only. X's own store gives it
// exactly one share (the self-fetch); H must serve nothing, so X stays
// locked with fewer than its threshold; healed, it learns it was removed.
func TestAttack2RemovedWhileDownMeetsRestartedStaleHolder(t *testing.T) {
	var cut atomic.Value
	cut.Store(peer.ID(""))
	nodes := cuttableCluster(t, 5, cuttable(t, &cut, nil))
	leader := leaderOf(t, nodes)
	fol := followers(nodes, leader)
	h, x := fol[0], fol[1]
	voters := []*Node{leader, fol[2], fol[3]}
	gen := current(leader)
	xID, hID := x.ID(), h.ID()
	cfgH, cfgX := h.cfg, x.cfg
	cfgH.Bootstrap, cfgH.Join = false, ""
	cfgX.Bootstrap, cfgX.Join = false, ""
	h.Close()
	x.Close()

	cut.Store(hID)
	recheckAll(voters...)
	voteOut(t, xID, voters...)
	for _, v := range voters {
		waitFor(t, "the removal to reach "+v.ID().String(), 10*time.Second, func() bool {
			return v.memberStatus(xID) == generations.StatusRemoved && !v.cons.InConfiguration(xID)
		})
	}

	// H restarts, still cut off: its ledger is whatever its disk replays.
	h = startNode(t, cfgH)
	if st := h.memberStatus(xID); st == generations.StatusRemoved {
		t.Fatalf("the restarted, cut-off holder already knows X is removed: the partition did not hold")
	}
	// X restarts and can reach H only.
	cfgX.setHooks(cfgX.hooks.withLibp2p(libp2p.ConnectionGater(onlyPeers{hID: true, xID: true})))
	x = startNode(t, cfgX)
	x.host.Peerstore().AddAddrs(hID, h.host.Addrs(), time.Hour)

	// Attack 6: X's own store still holds its own envelope (it was down
	// when the holders deleted theirs); the self-fetch returns it, one
	// share.
	if _, err := x.svc.Fetch(ctxT(t, 5*time.Second), xID, gen); err != nil {
		t.Logf("the removed node's self-fetch: %v", err)
	} else {
		t.Logf("the removed node's self-fetch returned its own envelope of generation %d (one share)", gen)
	}
	_, err := x.svc.Fetch(ctxT(t, 20*time.Second), hID, gen)
	if err == nil {
		t.Fatal("the restarted stale holder served the removed node's envelope")
	}
	if !errors.Is(err, shares.ErrForbidden) || !testkit.ErrorSays(err, "cannot confirm its ledger is current") {
		t.Fatalf("the restarted stale holder's refusal: %v, want ErrForbidden saying it cannot confirm its ledger", err)
	}
	t.Logf("restarted stale holder refused: %v", err)

	// X's own unlock attempt ends short: at most its own share.
	var p UnlockProgress
	waitFor(t, "X's unlock attempt to end short", 20*time.Second, func() bool {
		var st LockState
		st, p = x.LockState()
		if st == LockUnlocked {
			t.Fatalf("the removed node unlocked: %+v", p)
		}
		return strings.Contains(p.Reason, "fewer than the threshold")
	})
	if p.Have > 1 || p.Need < 2 {
		t.Fatalf("the removed node gathered %d of %d shares: more than its own", p.Have, p.Need)
	}
	t.Logf("removed node's unlock: %+v", p)
	if _, err := x.Key(ctxT(t, time.Second), "x", false); !errors.Is(err, ErrLocked) {
		t.Fatalf("the removed node's key: %v, want ErrLocked", err)
	}

	// Healed: H learns of the removal and says so; X believes it.
	cut.Store(peer.ID(""))
	recheckAll(voters...)
	recheckAll(h)
	waitFor(t, "H to catch up with the removal", 20*time.Second, func() bool {
		return h.memberStatus(xID) == generations.StatusRemoved
	})
	waitFor(t, "X to learn it was removed", 20*time.Second, func() bool {
		st, p := x.LockState()
		if st == LockUnlocked {
			t.Fatalf("the removed node unlocked: %+v", p)
		}
		return strings.Contains(p.Reason, "removed")
	})
}

// Attack 3 (keyring.go dropForeignKey): a K that fails the ledger's key
// check is wiped, so whoever can record a key check for an owner can lock
// it. A member recording one for another owner, the same with the author
// field spoofed to the victim, and a stranger are all refused by the
// ledger; the victim keeps its K, its key check and its derived keys.
func TestAttack2KeyCheckForAnotherOwnerRefused(t *testing.T) {
	nodes := testCluster(t, 3)
	waitUnlocked(t, nodes...)
	waitFullCoverage(t, nodes)
	leader := leaderOf(t, nodes)
	fol := followers(nodes, leader)
	adv, victim := fol[0], fol[1]
	checkOf := func(n *Node) []byte {
		var c []byte
		n.view(func(l *generations.Ledger) { c, _ = l.KeyCheck(victim.ID()) })
		return c
	}
	waitFor(t, "every member's key check in every ledger", 10*time.Second, func() bool {
		for _, n := range nodes {
			for _, m := range nodes {
				var c []byte
				n.view(func(l *generations.Ledger) { c, _ = l.KeyCheck(m.ID()) })
				if len(c) == 0 {
					return false
				}
			}
		}
		return true
	})
	before := captureState(t, nodes)
	check := checkOf(leader)
	if len(check) == 0 {
		t.Fatal("the victim has no key check recorded")
	}
	bogus := bytes.Repeat([]byte{0x5a}, len(check))
	now := time.Now()

	_, err := forge(t, adv, adv.priv, generations.NewRecordKeyCheck(victim.ID(), bogus, now))
	wantRefused(t, "a member recording a key check for another owner", err, generations.ErrNotAuthor)

	spoof := generations.NewRecordKeyCheck(victim.ID(), bogus, now)
	if err := generations.Sign(spoof, adv.priv, adv.ClusterID(), uint64(time.Now().UnixNano())); err != nil {
		t.Fatal(err)
	}
	spoof.Author = []byte(victim.ID())
	data, err := generations.EncodeCommand(spoof)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = propose(t, adv, data); err == nil {
		t.Error("a key check in the victim's name signed by another member was accepted")
	} else {
		t.Logf("a key check with a spoofed author: refused: %v", err)
	}

	strangerKey, _ := newKey(t)
	_, err = forge(t, adv, strangerKey, generations.NewRecordKeyCheck(victim.ID(), bogus, now))
	if err == nil {
		t.Error("a stranger's key check for a member was accepted")
	} else {
		t.Logf("a stranger's key check for a member: refused: %v", err)
	}

	// The victim runs its key duties on what its ledger says now: K stays.
	fresh(t, victim)
	victim.keyDuties()
	if st, p := victim.LockState(); st != LockUnlocked {
		t.Fatalf("the victim is %s after the attempts (%+v)", st, p)
	}
	for _, n := range nodes {
		if !bytes.Equal(checkOf(n), check) {
			t.Errorf("%s's ledger has another key check for the victim", n.ID())
		}
	}
	checkUnchanged(t, nodes, before)
}

// holderObserver is a node Observer that hands each holder event to
// onHolder.
type holderObserver struct{ onHolder func(shares.Event) }

func (o holderObserver) HolderEvent(ev shares.Event)                      { o.onHolder(ev) }
func (holderObserver) OwnerRequest(string, peer.ID, time.Duration, error) {}
func (holderObserver) Unlocked(time.Duration)                             {}

// Attack 4 (escrow.go, holder.go: a split replaces a stored one only on a
// ledger confirmed fresh). Holder H is cut off from Raft the moment it
// stores owner O's envelope of a new generation g, before O's receipts
// reach it (O pushes to no other holder until then), so H's ledger never
// learns that O is escrowed in g with that split. O then pushes H an
// envelope of another split for g. H cannot confirm its ledger, so it
// refuses and keeps the split the cluster counts; healed, it still refuses
// (the ledger now shows the escrow); O's escrow is untouched and O, once
// restarted, unlocks with the same K.
func TestAttack2CutOffHolderKeepsEscrowedSplit(t *testing.T) {
	var cut, owner, holder atomic.Value
	cut.Store(peer.ID(""))
	owner.Store(peer.ID(""))
	holder.Store(peer.ID(""))
	var after atomic.Uint64
	edit := cuttable(t, &cut, func(self peer.ID, c *Config) {
		c.hooks.dropPush = func(to peer.ID) bool {
			// O's pushes reach H (and O itself) first: until H stores its
			// envelope, no other holder's receipt can make O escrowed.
			return self == owner.Load().(peer.ID) && cut.Load().(peer.ID) == "" && to != holder.Load().(peer.ID) && to != self
		}
		c.Observer = holderObserver{onHolder: func(ev shares.Event) {
			if self == holder.Load().(peer.ID) && ev.Kind == shares.EventStored && ev.Owner == owner.Load().(peer.ID) && ev.Generation > after.Load() {
				cut.Store(self) // before the receipt leaves: Raft is refused per RPC
			}
		}}
	})
	nodes := cuttableCluster(t, 4, edit)
	leader := leaderOf(t, nodes)
	fol := followers(nodes, leader)
	h, o := fol[0], fol[1]
	keyBefore := mustKey(t, o, "app")
	var newest uint64
	leader.view(func(l *generations.Ledger) {
		if g, ok := l.Newest(); ok {
			newest = g.Number
		}
	})
	after.Store(newest)
	holder.Store(h.ID())
	owner.Store(o.ID())

	now := time.Now()
	if err := leader.apply(ctxT(t, 10*time.Second), generations.NewOpenGeneration(now.Add(time.Minute), now)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "H to store O's envelope of the new generation (and be cut off)", 15*time.Second, func() bool {
		return cut.Load().(peer.ID) == h.ID()
	})
	recheckAll(nodes...)
	var gen uint64
	leader.view(func(l *generations.Ledger) {
		g, _ := l.Newest()
		gen = g.Number
	})
	escrowIn := func(n *Node) (e generations.Escrow) {
		n.view(func(l *generations.Ledger) {
			for _, x := range l.Coverage(o.ID()).Live {
				if x.Generation == gen {
					e = x
				}
			}
		})
		return e
	}
	waitFor(t, "O to be escrowed in the new generation without H's ledger", 15*time.Second, func() bool {
		return escrowIn(leader).Escrowed
	})
	stored, err := h.store.Get(gen, o.ID())
	if err != nil {
		t.Fatalf("H's envelope of O for generation %d: %v", gen, err)
	}
	s1 := stored.Binding.Split
	counted := escrowIn(leader)
	if counted.Split != s1 {
		t.Fatalf("the cluster counts O's split %x, H stores %x", counted.Split[:], s1[:])
	}
	hView := escrowIn(h)
	t.Logf("H's stale view of O in generation %d: escrowed=%v held=%d", gen, hView.Escrowed, hView.Held)

	// O pushes H an envelope of another split for g.
	share, err := shares.Split(bytes.Repeat([]byte{1}, KeySize), 4, 3)
	if err != nil {
		t.Fatal(err)
	}
	env, err := shares.Seal(o.priv, shares.Binding{ClusterID: o.ClusterID(), Owner: o.ID(), Generation: gen, Holder: h.ID(), Split: shares.NewSplitID()}, share[0], rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, err = o.svc.Push(ctxT(t, 10*time.Second), h.ID(), env)
	switch {
	case err == nil:
		t.Error("the cut-off holder replaced the escrowed split")
	case !hView.Escrowed && !testkit.ErrorSays(err, "cannot confirm its ledger is current"):
		t.Errorf("the cut-off holder refused, but not for its unconfirmed ledger: %v", err)
	default:
		t.Logf("cut-off holder refused another split: %v", err)
	}
	if got, err := h.store.Get(gen, o.ID()); err != nil || got.Binding.Split != s1 {
		t.Fatalf("H no longer keeps the counted split: %v", err)
	}

	// Healed, H's ledger shows the escrow: still refused.
	cut.Store(peer.ID(""))
	recheckAll(nodes...)
	fresh(t, h)
	if _, err = o.svc.Push(ctxT(t, 10*time.Second), h.ID(), env); !errors.Is(err, shares.ErrDuplicate) {
		t.Errorf("the caught-up holder's answer to another split: %v, want ErrDuplicate", err)
	}
	if got, err := h.store.Get(gen, o.ID()); err != nil || got.Binding.Split != s1 {
		t.Fatalf("H no longer keeps the counted split after the heal: %v", err)
	}
	if e := escrowIn(leader); !e.Escrowed || e.Split != s1 || e.Held < counted.Held {
		t.Fatalf("O's escrow changed: %+v, was %+v", e, counted)
	}

	// O's escrow still gives K back.
	o = restart(t, o)
	waitUnlocked(t, o)
	if got := mustKey(t, o, "app"); !bytes.Equal(got, keyBefore) {
		t.Fatal("O derives another key after the attack")
	}
}

// openAndCommit has n open a generation and waits until it commits.
func openAndCommit(t testing.TB, n *Node) {
	t.Helper()
	before := current(n)
	now := time.Now()
	if err := n.apply(ctxT(t, 10*time.Second), generations.NewOpenGeneration(now.Add(time.Minute), now)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the generation to commit", 15*time.Second, func() bool { return current(n) > before })
}

// Attack 5 (generations LapseGrace): an absent member's newest escrow
// outlives the retention bound for the lapse grace. The grace must not
// keep a removed member's shares: C is down, two generations commit (C is
// two behind a bound of one, within its one-hour grace, so its escrow is
// kept), then a majority removes C. Every holder deletes all of C's
// envelopes at once, the grace notwithstanding, and C, restarted, is
// refused by every holder and stays locked.
func TestAttack2LapseGraceKeepsNoRemovedShares(t *testing.T) {
	cfg := testConfig(t)
	cfg.Bootstrap = true
	cfg.MaxGenerationsBehind = 1 // and the default lapse grace of one hour
	a := startNode(t, cfg)
	b := joinNode(t, a)
	c := joinNode(t, a)
	nodes := []*Node{a, b, c}
	waitAgree(t, nodes, 3)
	waitUnlocked(t, nodes...)
	waitFullCoverage(t, nodes)
	g0 := current(a)
	cID := c.ID()
	cfgC := c.cfg
	cfgC.Bootstrap, cfgC.Join = false, ""
	c.Close()

	openAndCommit(t, a)
	openAndCommit(t, a)
	if st := a.memberStatus(cID); st != generations.StatusActive {
		t.Fatalf("two generations behind, within its lapse grace, C is %s", st)
	}
	for _, h := range []*Node{a, b} {
		if _, err := h.store.Get(g0, cID); err != nil {
			t.Fatalf("within the grace, holder %s no longer keeps C's escrow of generation %d: %v", h.ID(), g0, err)
		}
	}

	removeByMajority(t, cID, a, b)
	waitFor(t, "every holder to delete all of the removed member's envelopes", 10*time.Second, func() bool {
		return !storeHolds(t, a, cID) && !storeHolds(t, b, cID)
	})
	c = startNode(t, cfgC)
	for _, h := range []*Node{a, b} {
		_, err := c.svc.Fetch(ctxT(t, 10*time.Second), h.ID(), g0)
		if !errors.Is(err, shares.ErrOwnerRemoved) {
			t.Errorf("holder %s's answer to the removed member within the grace: %v, want ErrOwnerRemoved", h.ID(), err)
		}
	}
	waitFor(t, "C to learn it was removed", 20*time.Second, func() bool {
		st, p := c.LockState()
		if st == LockUnlocked {
			t.Fatalf("the removed member unlocked: %+v", p)
		}
		return strings.Contains(p.Reason, "removed")
	})
}

// Attack 5 and 1: after its grace, an absent member lapses (its envelopes
// are deleted by every holder), and a lapsed member presenting its old,
// consumed invite is refused by the resume and told nothing.
func TestAttack2LapsedMemberCannotResume(t *testing.T) {
	cfg := testConfig(t)
	cfg.Bootstrap = true
	cfg.MaxGenerationsBehind = 1
	cfg.LapseGrace = 2 * time.Second
	a := startNode(t, cfg)
	b := joinNode(t, a)
	c := joinNode(t, a)
	nodes := []*Node{a, b, c}
	waitAgree(t, nodes, 3)
	waitUnlocked(t, nodes...)
	waitFullCoverage(t, nodes)
	cID, tok := c.ID(), c.cfg.Join
	cfgC := c.cfg
	cfgC.Bootstrap, cfgC.Join = false, ""
	c.Close()

	openAndCommit(t, a)
	openAndCommit(t, a)
	if st := a.memberStatus(cID); st != generations.StatusActive {
		t.Fatalf("within its lapse grace, C is %s", st)
	}
	var poked time.Time
	waitFor(t, "C to lapse after its grace", 20*time.Second, func() bool {
		if a.memberStatus(cID) == generations.StatusLapsed {
			return true
		}
		if time.Since(poked) > 500*time.Millisecond {
			poked = time.Now()
			_, _ = a.Invite(ctxT(t, 5*time.Second), time.Minute)
		}
		return false
	})
	waitFor(t, "holders to delete the lapsed member's envelopes", 10*time.Second, func() bool {
		return !storeHolds(t, a, cID) && !storeHolds(t, b, cID)
	})
	c = startNode(t, cfgC)
	waitFor(t, "b to know C lapsed", 10*time.Second, func() bool { return b.memberStatus(cID) == generations.StatusLapsed })
	for _, m := range []*Node{a, b} {
		wantJoinRefused(t, "a lapsed member resuming with its consumed invite", sendJoin(t, c.host, m, joinCmdWith(t, c, tok)))
	}
	waitFor(t, "the lapsed member to say it must be invited again", 20*time.Second, func() bool {
		st, p := c.LockState()
		if st == LockUnlocked {
			t.Fatalf("the lapsed member unlocked: %+v", p)
		}
		return strings.Contains(p.Reason, "invited again") || strings.Contains(p.Reason, "lapsed")
	})
}

// Attack 1, from a member whose ledger is stale. Member S took J's invite
// and saw J's generation open (J joining), then was cut off from Raft; J's
// generation committed without S's ledger. J, admitted and escrowed,
// presents its consumed invite to S (as a J restarted without Raft state
// does: S is first in the invite). S cannot confirm its ledger, so it
// must not describe J's standing: answered "still joining, generation g
// open", a restarted J keeps the fresh K its new process made and splits
// it into g instead of dropping it (join.go resume).
func TestAttack2ResumeFromStaleMember(t *testing.T) {
	var cut atomic.Value
	cut.Store(peer.ID(""))
	var hold atomic.Bool
	edit := cuttable(t, &cut, nil)
	// Four and J: with S cut off and J down, the other three keep a quorum.
	nodes := cuttableCluster(t, 4, edit)
	leader := leaderOf(t, nodes)
	s := followers(nodes, leader)[0]

	issued, err := s.Invite(ctxT(t, 10*time.Second), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfgJ := testConfig(t)
	cfgJ.Join = issued.Token
	edit(&cfgJ)
	cfgJ.hooks.dropPush = func(peer.ID) bool { return hold.Load() } // J escrows nothing until S is cut off
	jID := cfgJ.identityPeer(t)
	hold.Store(true)
	type started struct {
		n   *Node
		err error
	}
	done := make(chan started, 1)
	go func() {
		n, err := Start(ctxT(t, 60*time.Second), cfgJ)
		done <- started{n, err}
	}()
	waitFor(t, "S to see J joining", 15*time.Second, func() bool { return s.memberStatus(jID) == generations.StatusJoining })
	cut.Store(s.ID())
	recheckAll(nodes...)
	hold.Store(false)
	var j *Node
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("J's join: %v", r.err)
		}
		j = r.n
		t.Cleanup(func() { j.Close() })
	case <-time.After(30 * time.Second):
		t.Fatal("J's join did not finish")
	}
	waitFor(t, "J's key check in the leader's ledger", 15*time.Second, func() bool {
		var c []byte
		leader.view(func(l *generations.Ledger) { c, _ = l.KeyCheck(jID) })
		return len(c) > 0
	})
	if st := s.memberStatus(jID); st != generations.StatusJoining {
		t.Fatalf("the cut-off member sees J as %s: the partition did not hold", st)
	}

	resp := sendJoin(t, j.host, s, joinCmdOf(t, j))
	switch {
	case resp.GetErrorCode() != "":
		t.Logf("the stale member refused the resume: %s: %s", resp.GetErrorCode(), resp.GetErrorMessage())
	case resp.GetAdmitted():
		t.Logf("the stale member answered admitted")
	default:
		t.Errorf("BUG: a member that cannot confirm its ledger answered an admitted, escrowed joiner's resume as still joining (admitted=false, generation %d open): a restarted joiner told so keeps the fresh K its new process made and shares it", resp.GetOpened().GetNumber())
	}

	// The consequence: J killed with no Raft state on its disk (issue 12's
	// worst moment) restarts and asks S first.
	want := mustKey(t, j, "app")
	j.Close()
	if err := os.RemoveAll(cfgJ.raftDir()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgJ.joiningPath(), []byte(issued.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgJ.Join = ""
	go func() {
		n, err := Start(ctxT(t, 60*time.Second), cfgJ)
		done <- started{n, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			_, statErr := os.Stat(cfgJ.joiningPath())
			t.Fatalf("BUG: the admitted, escrowed member restarted without Raft state was told by the stale member it is still joining, and its start failed: %v (consumed invite still on disk: %v)", r.err, statErr == nil)
		}
		j = r.n
		t.Cleanup(func() { j.Close() })
	case <-time.After(40 * time.Second):
		t.Fatal("the restarted member's start did not return")
	}
	waitUnlocked(t, j)
	if got := mustKey(t, j, "app"); !bytes.Equal(got, want) {
		var check []byte
		leader.view(func(l *generations.Ledger) { check, _ = l.KeyCheck(j.ID()) })
		k := j.keys.get()
		defer clear(k)
		t.Fatalf("BUG: the restarted member derives another key (the fresh K the stale answer let it keep): gathered from generation %d, K in memory matches the ledger's key check: %v",
			j.keys.gatheredFrom(), bytes.Equal(check, keyCheck(k, j.ClusterID(), j.ID())))
	}
}

// Attack 1, the resume's failure path. J was admitted (active, escrowed,
// holding its peers' envelopes) and killed before its Raft state reached
// its disk. It restarts during a cold start of the cluster: one member is
// up, which answers its resume "admitted", but there is no quorum yet, so
// its ledger cannot catch up within JoinTimeout. Giving up is fine; but
// J is a member, not a failed joiner: its start must not delete what it
// holds (the envelopes of the other members, the consumed invite it needs
// to resume again) as a failed first join does.
func TestAttack2AdmittedResumeWithoutQuorumKeepsItsData(t *testing.T) {
	nodes := testCluster(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	issued, err := a.Invite(ctxT(t, 10*time.Second), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Join = issued.Token
	j := startNode(t, cfg)
	all := []*Node{a, b, c, j}
	waitAgree(t, all, 4)
	waitUnlocked(t, all...)
	waitFullCoverage(t, all)
	held, err := j.store.List()
	if err != nil || len(held) == 0 {
		t.Fatalf("J holds no envelopes: %v", err)
	}

	// J killed with no Raft state on disk; b and c are down too.
	j.Close()
	if err := os.RemoveAll(cfg.raftDir()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.joiningPath(), []byte(issued.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.Close()
	c.Close()
	waitFor(t, "a to know no leader", 10*time.Second, func() bool { return a.cons.Leader() == "" })
	cfg.Join = ""
	cfg.JoinTimeout = 3 * time.Second
	n, err := Start(ctxT(t, 30*time.Second), cfg)
	if err == nil {
		n.Close()
		t.Fatal("J joined without a quorum")
	}
	t.Logf("J's start without a quorum: %v", err)
	var lost []string
	for _, p := range []string{cfg.sharesPath(), cfg.joiningPath(), cfg.clusterPath()} {
		if _, err := os.Stat(p); err != nil {
			lost = append(lost, p[len(cfg.DataDir):])
		}
	}
	if len(lost) > 0 {
		t.Errorf("BUG: an admitted member whose resume timed out waiting for a quorum deleted %v (it held %d envelopes of other members; without the invite it cannot resume again)", lost, len(held))
	}
}

// escrowedK rebuilds owner's K from the envelopes its holders store for
// generation gen (a threshold of one split), with the owner's identity
// from its data directory: what the cluster gives back on unlock.
func escrowedK(t testing.TB, ownerDir string, gen uint64, threshold int, holders ...*Node) []byte {
	t.Helper()
	priv, err := loadOrCreateIdentity(Config{DataDir: ownerDir}.IdentityPath())
	if err != nil {
		t.Fatal(err)
	}
	owner, _ := peer.IDFromPrivateKey(priv)
	bySplit := map[generations.SplitID][][]byte{}
	for _, h := range holders {
		env, err := h.store.Get(gen, owner)
		if err != nil {
			continue
		}
		s, b, err := shares.Open(priv, env)
		if err != nil {
			t.Fatalf("open %s's envelope held by %s: %v", owner, h.ID(), err)
		}
		bySplit[b.Split] = append(bySplit[b.Split], s)
	}
	for _, ss := range bySplit {
		if len(ss) >= threshold {
			k, err := shares.Combine(ss)
			if err != nil {
				t.Fatal(err)
			}
			return k
		}
	}
	t.Fatalf("no split of %s in generation %d reaches the threshold %d among the holders", owner, gen, threshold)
	return nil
}

// Attack 1 and 3 (join.go resume, keyring.go dropForeignKey): a joiner
// crashes after its own escrow in its generation g was recorded, before g
// commits (so before it could record its key check), with its Raft state
// and the consumed invite on disk. Restarted, its new process makes a
// fresh K'. The resume tells it it is still joining; its ledger shows it
// escrowed in g, so it rightly splits nothing. When g commits it is an
// active member escrowed with the first K, and no key check is recorded:
// nothing drops K'. It must not release keys derived from K' (not
// escrowed anywhere: lost on its next restart), nor record K”s key check
// (the escrowed K would then fail it for good).
func TestAttack2CrashedJoinerKeepsNoForeignK(t *testing.T) {
	var cutJ atomic.Value
	cutJ.Store(peer.ID(""))
	var holdOthers atomic.Bool
	deny := func(self peer.ID) func(peer.ID) bool {
		return func(p peer.ID) bool {
			x := cutJ.Load().(peer.ID)
			return x != "" && p != self && (p == x || self == x)
		}
	}
	edit := func(c *Config) {
		self := c.identityPeer(t)
		c.setHooks(&testHooks{raftDeny: deny(self), dropPush: func(peer.ID) bool { return holdOthers.Load() }})
	}
	nodes := cuttableCluster(t, 3, edit)
	leader := leaderOf(t, nodes)
	issued, err := leader.Invite(ctxT(t, 10*time.Second), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfgJ := testConfig(t)
	cfgJ.Join = issued.Token
	jID := cfgJ.identityPeer(t)
	cfgJ.setHooks(&testHooks{raftDeny: deny(jID)})

	// The members hold their own shares back, so g cannot commit while
	// J escrows.
	holdOthers.Store(true)
	ctxJ, cancelJ := context.WithCancel(context.Background())
	defer cancelJ()
	done := make(chan error, 1)
	go func() {
		n, err := Start(ctxJ, cfgJ)
		if err == nil {
			n.Close()
		}
		done <- err
	}()
	var gen uint64
	var threshold int
	waitFor(t, "J to be escrowed in its open generation", 20*time.Second, func() bool {
		var e *generations.Escrow
		leader.view(func(l *generations.Ledger) { e = l.Coverage(jID).Open })
		if e == nil || !e.Escrowed {
			return false
		}
		gen, threshold = e.Generation, e.Threshold
		return true
	})
	// The crash: J's disk as it is now (Raft state, consumed invite).
	cutJ.Store(jID)
	recheckAll(nodes...)
	crashed := copyDataDir(t, cfgJ.DataDir)
	cancelJ()
	if err := <-done; err == nil {
		t.Fatal("the first J process joined while its generation was held open")
	}

	// J restarts from that disk; then the members share and g commits.
	cutJ.Store(peer.ID(""))
	recheckAll(nodes...)
	cfgJ.DataDir, cfgJ.Join = crashed, ""
	start := make(chan *Node, 1)
	go func() {
		n, err := Start(ctxT(t, 60*time.Second), cfgJ)
		if err != nil {
			t.Errorf("the restarted joiner: %v", err)
		}
		start <- n
	}()
	waitFor(t, "the restarted joiner's resume to reach the ledger", 10*time.Second, func() bool {
		return leader.memberStatus(jID) == generations.StatusJoining
	})
	holdOthers.Store(false)
	var j *Node
	select {
	case j = <-start:
	case <-time.After(40 * time.Second):
		t.Fatal("the restarted joiner's start did not return")
	}
	if j == nil {
		return
	}
	t.Cleanup(func() { j.Close() })
	// J's escrowed K, from its holders' envelopes (its own included).
	k := escrowedK(t, crashed, gen, threshold, append(append([]*Node{}, nodes...), j)...)
	defer clear(k)
	want, err := deriveKey(k, leader.ClusterID(), "app")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "J's generation to commit", 20*time.Second, func() bool { return leader.memberStatus(jID) == generations.StatusActive })

	var served []byte
	waitFor(t, "the restarted joiner to release keys or gather its escrowed K", 20*time.Second, func() bool {
		got, err := j.Key(ctxT(t, time.Second), "app", false)
		if err != nil {
			return false
		}
		served = got
		return true
	})
	if !bytes.Equal(served, want) {
		t.Errorf("BUG: the restarted joiner serves keys derived from a K that is not its escrowed one (the fresh K of its new process, escrowed nowhere: lost with its next restart)")
	}
	var check []byte
	waitFor(t, "J's key check", 10*time.Second, func() bool {
		leader.view(func(l *generations.Ledger) { check, _ = l.KeyCheck(jID) })
		return len(check) > 0
	})
	if !bytes.Equal(check, keyCheck(k, leader.ClusterID(), jID)) {
		t.Errorf("BUG: the key check recorded for J is not that of its escrowed K: unlocking from its holders now fails the check for good")
	}
	var cov generations.Coverage
	leader.view(func(l *generations.Ledger) { cov = l.Coverage(jID) })
	t.Logf("J's coverage: generation %d, %d of %d held, split %x, can unlock %v", cov.Generation, cov.SharesHeld, cov.Threshold, cov.Split[:4], cov.CanUnlock)

	// What the cluster gives back after J's next restart.
	j = restart(t, j)
	err = testkit.Poll(15*time.Second, func() (bool, string) {
		st, p := j.LockState()
		return st == LockUnlocked, fmt.Sprintf("%s: %+v", st, p)
	})
	if err != nil {
		t.Errorf("BUG: after one more restart J does not unlock (its escrowed K fails the key check recorded from K'): %v", err)
	} else if got := mustKey(t, j, "app"); !bytes.Equal(got, served) {
		t.Errorf("BUG: after one more restart J derives other keys than it served before")
	}
}
