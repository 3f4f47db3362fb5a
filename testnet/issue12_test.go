package testnet

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/p2pkey/p2pkey/node"
)

// Regression tests of issue 12, each on real daemons. They describe the
// sequences the issue reports; they fail on the code the issue was filed
// against.

// TestIssue12RestartInOpenGeneration is point 1: a member X that restarts
// while a join's generation is open must not end up with shares of two
// splits counted as one escrow, and must keep the margin the issue expects.
//
// 5 nodes; a joiner is paused (SIGSTOP) as soon as its invite is consumed,
// then runs in steps of 1 ms, 100 ms apart (a slow joiner), until the
// ledger shows a member X escrowed in the joiner's open generation. X is
// killed (-9) and restarted while the generation is open, with the joiner
// paused; once X is back (and before the generation could be aborted as a
// stalled join), the joiner resumes and the generation commits.
// Then, as in the issue, one holder of X's first split is stopped and X
// restarts: it must unlock, with the same derived key, and the escrow
// invariant must hold for it.
func TestIssue12RestartInOpenGeneration(t *testing.T) {
	c := newTnet(t, 5)
	if _, err := c.settle(90*time.Second, checkOpts{}); err != nil {
		t.Fatal(err)
	}
	j, x, og, first, err := c.slowJoin(rand.New(rand.NewPCG(12, 1)), 4, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.resume(j.i) })
	w := without(c.members(), x)[0] // whose ledger the test reads while X restarts
	t.Logf("generation %d open (%d members, threshold %d) for slow joiner node %d, now paused; node %d escrowed in it with receipts from nodes %v",
		og.Number, len(og.Members), og.Threshold, j.i, x.i, indexes(first))

	if err := c.kill(x.i); err != nil {
		t.Fatal(err)
	}
	if err := c.start(x.i); err != nil {
		t.Fatal(err)
	}
	if err := poll(60*time.Second, func() (bool, string) {
		st, err := c.status(x.i)
		return err == nil && st.Lock == node.LockUnlocked, fmt.Sprintf("%v %s %s", err, st.Lock, st.Unlock.Reason)
	}); err != nil {
		t.Fatalf("node %d after its restart: %v", x.i, err)
	}
	// Give X time to act on the open generation (a build with the bug
	// shares a second split into it) before the joiner resumes, and resume
	// it before the generation could be aborted as a stalled join.
	hold := min(2*time.Second, time.Until(resumeBy(og)))
	time.Sleep(hold) // the joiner's pause: part of the fault's schedule
	t.Logf("node %d restarted and unlocked; the joiner resumes %v later", x.i, hold.Round(time.Millisecond))

	if err := c.resume(j.i); err != nil {
		t.Fatal(err)
	}
	if _, err := c.settle(90*time.Second, checkOpts{skipEscrow: true}); err != nil {
		t.Fatalf("after the joiner resumed: %v", err)
	}
	// Let X's coverage top up to every member of its escrow generation, if
	// it does.
	var mine node.MemberInfo
	poll(10*time.Second, func() (bool, string) {
		st, err := c.status(w.i)
		if err != nil {
			return false, err.Error()
		}
		for _, m := range st.Members {
			if m.PeerID == x.peer.String() {
				mine = m
			}
		}
		return mine.SharesHeld == len(c.members()), fmt.Sprintf("node %d holds %d", x.i, mine.SharesHeld)
	})
	escrowErr := func() error {
		st, err := c.status(w.i)
		if err != nil {
			return err
		}
		gens, err := c.generations(w.i)
		if err != nil {
			return err
		}
		return c.checkEscrow(st, gens)
	}()
	if escrowErr != nil {
		t.Errorf("after node %d restarted in open generation %d: %v", x.i, og.Number, escrowErr)
	}

	stop := slices.DeleteFunc(without(first, x, j, w), func(n *tnode) bool { return n.role != roleMember })[0]
	t.Logf("node %d: escrow generation %v, %d shares held, threshold %d; stopping node %d, a holder of its first split, and restarting node %d",
		x.i, deref(mine.EscrowGeneration), mine.SharesHeld, mine.Threshold, stop.i, x.i)
	if err := c.signal(stop.i, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.kill(x.i); err != nil {
		t.Fatal(err)
	}
	if err := c.start(x.i); err != nil {
		t.Fatal(err)
	}
	var st node.Status
	if err := poll(45*time.Second, func() (bool, string) {
		var err error
		st, err = c.status(x.i)
		return err == nil && st.Lock == node.LockUnlocked, fmt.Sprintf("%v %s: %s", err, st.Lock, st.Unlock.Reason)
	}); err != nil {
		t.Fatalf("node %d does not unlock with one holder of its first split down (the ledger counted %d shares in generation %v, threshold %d): %v",
			x.i, mine.SharesHeld, deref(mine.EscrowGeneration), mine.Threshold, err)
	}
	k, code, err := c.key(x.i)
	if err != nil || code != 0 || k != x.key {
		t.Fatalf("node %d's derived key after the restarts: exit %d, %v, same as before: %v", x.i, code, err, k == x.key)
	}
}

// TestIssue12KilledJoinerDoesNotWedge is point 2: a joiner killed right
// after its invite is consumed must not hold up the next join. The second
// joiner, started at once, must be admitted within 20 s of its start (not
// after the first one's 2-minute generation deadline), and the cluster must
// then be healthy with nothing left open.
func TestIssue12KilledJoinerDoesNotWedge(t *testing.T) {
	c := newTnet(t, 3)
	if _, err := c.settle(90*time.Second, checkOpts{}); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(12, 2))
	lead := c.leader()
	j1, err := c.holdJoinRetry(r, lead, 3, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.kill(j1.i); err != nil {
		t.Fatal(err)
	}
	j1.role = roleGone
	inv2, err := c.invite(r)
	if err != nil {
		t.Fatal(err)
	}
	j2 := c.newNode()
	start := time.Now()
	if err := c.launchJoiner(j2, inv2); err != nil {
		t.Fatal(err)
	}
	var seen string
	if err := poll(20*time.Second, func() (bool, string) {
		st, err := c.status(lead.i)
		if err != nil {
			return false, err.Error()
		}
		seen = ""
		for _, m := range st.Members {
			if m.PeerID == j2.peer.String() {
				seen = m.Status
			}
		}
		return seen == "active", fmt.Sprintf("second joiner is %q; open generation %+v", seen, st.Generation.Open)
	}); err != nil {
		t.Fatalf("the second joiner was not admitted within 20 s of its start, after the first was killed once its invite was consumed: %v", err)
	}
	t.Logf("second joiner admitted %v after its start", time.Since(start).Round(time.Millisecond))
	j2.role = roleMember
	if _, err := c.settle(60*time.Second, checkOpts{}); err != nil {
		t.Fatal(err)
	}
}

// TestIssue12InviteDuringLeaderPause is point 3: with the leader paused
// (SIGSTOP), `invite` on a follower must succeed within 2 s of the new
// election, measured from when `status --json` on the other follower first
// shows a new leader.
func TestIssue12InviteDuringLeaderPause(t *testing.T) {
	c := newTnet(t, 3)
	if _, err := c.settle(90*time.Second, checkOpts{}); err != nil {
		t.Fatal(err)
	}
	lead := c.leader()
	followers := without(c.members(), lead)
	f, g := followers[0], followers[1]
	if err := c.pause(lead.i); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.resume(lead.i) })
	paused := time.Now()
	type result struct {
		out  string
		code int
		err  error
		at   time.Time
	}
	done := make(chan result, 1)
	go func() {
		out, code, err := c.cli(f.i, 60*time.Second, "invite", "--ttl", "10m")
		done <- result{out, code, err, time.Now()}
	}()
	var elected time.Time
	var newLeader string
	if err := poll(30*time.Second, func() (bool, string) {
		st, err := c.status(g.i)
		if err != nil {
			return false, err.Error()
		}
		newLeader = st.Raft.Leader
		return newLeader != "" && newLeader != lead.peer.String(), "leader " + short(newLeader)
	}); err != nil {
		t.Fatalf("no new leader with node %d paused: %v", lead.i, err)
	}
	elected = time.Now()
	res := <-done
	t.Logf("leader node %d paused; node %d saw new leader %s after %v; invite on node %d returned after %v (exit %d)",
		lead.i, g.i, short(newLeader), elected.Sub(paused).Round(time.Millisecond), f.i, res.at.Sub(paused).Round(time.Millisecond), res.code)
	if res.err != nil || res.code != 0 {
		t.Fatalf("invite on follower node %d with the leader paused: exit %d, %v: %s", f.i, res.code, res.err, res.out)
	}
	if late := res.at.Sub(elected); late > 2*time.Second {
		t.Fatalf("invite on follower node %d succeeded %v after the new election, want within 2s", f.i, late.Round(time.Millisecond))
	}
	if err := c.resume(lead.i); err != nil {
		t.Fatal(err)
	}
	if _, err := c.settle(60*time.Second, checkOpts{}); err != nil {
		t.Fatal(err)
	}
}
