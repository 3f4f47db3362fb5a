package testnet

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/p2pkey/p2pkey/node"
)

// The verifier, in the spirit of hashicorp/raft's fuzzy/verifier.go: after a
// fault, the cluster must come back to a state where
//
//   - every member runs, knows the same single leader, and is unlocked;
//   - its derived key (`key --purpose chaos`) is byte for byte the one it
//     had before the fault;
//   - every node sees one current generation, the same one, and none open;
//   - the active members are exactly the test's members, all voters;
//   - removed nodes stay locked (`key` exits 3);
//   - the escrow invariant holds (escrow_test.go).
//
// A joiner whose fate was open (its join was faulted) is settled on the way:
// admitted, it becomes a member; refused or gone, its daemon is stopped.
//
// check returns what is not yet so (why), or a safety violation (fatal)
// that no later state can undo: a derived key that changed, a removed node
// that unlocked or came back, a member dropped without a vote.

// checkOpts selects the verifier's parts.
type checkOpts struct {
	skipEscrow bool
}

func (c *tnet) check(o checkOpts) (why string, fatal error) {
	type answer struct {
		st  node.Status
		err error
	}
	members := c.members()
	for _, m := range members {
		if !c.alive(m.i) {
			return fmt.Sprintf("member node %d is not running", m.i), nil
		}
	}
	sts := map[int]answer{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	joiners := c.byRole(roleJoining)
	for _, m := range append(slices.Clone(members), joiners...) {
		if m.role == roleJoining && !c.alive(m.i) {
			continue
		}
		wg.Go(func() {
			st, err := c.status(m.i)
			mu.Lock()
			sts[m.i] = answer{st, err}
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, m := range members {
		if a := sts[m.i]; a.err != nil {
			return a.err.Error(), nil
		}
	}

	// One leader that everyone knows.
	var leaderID string
	leaders := 0
	for _, m := range members {
		st := sts[m.i].st
		switch {
		case st.Raft.Leader == "":
			return fmt.Sprintf("node %d knows no leader", m.i), nil
		case leaderID == "":
			leaderID = st.Raft.Leader
		case st.Raft.Leader != leaderID:
			return fmt.Sprintf("node %d follows %s, others %s", m.i, short(st.Raft.Leader), short(leaderID)), nil
		}
		if st.Raft.State == "leader" {
			leaders++
		}
		if st.PeerID != m.peer.String() {
			return "", fmt.Errorf("node %d answers as %s, its identity is %s", m.i, st.PeerID, m.peer)
		}
	}
	lead := c.byPeer(leaderID)
	if lead == nil || (lead.role != roleMember && lead.role != roleJoining) {
		return fmt.Sprintf("the leader %s is not a member", short(leaderID)), nil
	}
	la, ok := sts[lead.i]
	if !ok || la.err != nil {
		return fmt.Sprintf("the leader, joiner node %d, does not answer", lead.i), nil
	}
	lst := la.st
	ledger := map[string]node.MemberStatus{}
	for _, m := range lst.Members {
		ledger[m.PeerID] = m
	}

	// Settle the joiners whose join was faulted (one of them may lead
	// already).
	for _, j := range joiners {
		switch s := ledger[j.peer.String()].Status; {
		case s == "active":
			j.role = roleMember
			return fmt.Sprintf("joiner node %d was admitted", j.i), nil
		case s == "joining", s == "" && c.alive(j.i):
			return fmt.Sprintf("joiner node %d is %q in the ledger", j.i, s), nil
		default: // refused, or gone before its invite was consumed
			if err := c.kill(j.i); err != nil {
				return err.Error(), nil
			}
			j.role = roleGone
		}
	}

	if leaders != 1 {
		return fmt.Sprintf("%d nodes say they lead", leaders), nil
	}

	// One current generation, the same everywhere, none open.
	cur := lst.Generation.Current
	for _, m := range members {
		st := sts[m.i].st
		if o := st.Generation.Open; o != nil {
			return fmt.Sprintf("node %d sees generation %d open", m.i, o.Number), nil
		}
		if st.Generation.Current == nil || cur == nil || *st.Generation.Current != *cur {
			return fmt.Sprintf("node %d's current generation is %v, the leader's %v", m.i, deref(st.Generation.Current), deref(cur)), nil
		}
		if st.ClusterID != lst.ClusterID {
			return "", fmt.Errorf("node %d is in cluster %s, the leader in %s", m.i, st.ClusterID, lst.ClusterID)
		}
	}

	// The members are exactly the test's members, and removed nodes stay out.
	want := map[string]bool{}
	for _, m := range members {
		want[m.peer.String()] = true
		e, ok := ledger[m.peer.String()]
		switch {
		case !ok:
			return fmt.Sprintf("member node %d is not in the leader's ledger", m.i), nil
		case e.Status == "removed" || e.Status == "lapsed" || e.Status == "rejected":
			return "", fmt.Errorf("member node %d is %s in the ledger although the test removed nothing (%s)", m.i, e.Status, e.Reason)
		case e.Status != "active":
			return fmt.Sprintf("member node %d is %s", m.i, e.Status), nil
		case !e.Voter:
			return fmt.Sprintf("member node %d is not a voter", m.i), nil
		}
	}
	for id, e := range ledger {
		if e.Status != "active" || want[id] {
			continue
		}
		if n := c.byPeer(id); n != nil && n.role == roleRemoved {
			return "", fmt.Errorf("removed node %d is active again", n.i)
		}
		return fmt.Sprintf("%s is active but not a member the test knows", short(id)), nil
	}
	for _, r := range c.byRole(roleRemoved) {
		if s := ledger[r.peer.String()].Status; s != "removed" {
			return fmt.Sprintf("removed node %d is %q in the ledger", r.i, s), nil
		}
	}

	// Unlocked, with the same derived keys; removed nodes locked.
	for _, m := range members {
		if st := sts[m.i].st; st.Lock != node.LockUnlocked {
			return fmt.Sprintf("node %d is %s (%s)", m.i, st.Lock, st.Unlock.Reason), nil
		}
	}
	type keyAnswer struct {
		key  string
		code int
		err  error
	}
	keys := map[int]keyAnswer{}
	probe := append(members, c.byRole(roleRemoved)...)
	for _, n := range probe {
		if !c.alive(n.i) {
			continue
		}
		wg.Go(func() {
			k, code, err := c.key(n.i)
			mu.Lock()
			keys[n.i] = keyAnswer{k, code, err}
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, r := range c.byRole(roleRemoved) {
		a, ok := keys[r.i]
		if ok && a.err == nil && a.code == 0 {
			return "", fmt.Errorf("removed node %d derived a key: it is not locked", r.i)
		}
	}
	for _, m := range members {
		a := keys[m.i]
		switch {
		case a.err != nil:
			return a.err.Error(), nil
		case a.code != 0:
			return fmt.Sprintf("key on node %d: exit %d: %s", m.i, a.code, strings.TrimSpace(a.key)), nil
		case m.key == "":
			m.key = a.key
		case a.key != m.key:
			return "", fmt.Errorf("node %d derives a different key than before", m.i)
		}
	}

	// The leader's generations agree, and the escrow invariant holds.
	gens, err := c.generations(lead.i)
	if err != nil {
		return err.Error(), nil
	}
	current, open := 0, 0
	for _, g := range gens {
		if g.Current {
			current++
			if g.Number != *cur {
				return fmt.Sprintf("generations names %d current, status %d", g.Number, *cur), nil
			}
		}
		if g.State == "open" {
			open++
		}
	}
	if current != 1 || open != 0 {
		return fmt.Sprintf("%d current and %d open generations", current, open), nil
	}
	if o.skipEscrow {
		return "", nil
	}
	if err := c.checkEscrow(lst, gens); err != nil {
		return err.Error(), nil
	}
	return "", nil
}

// settle polls check until the cluster is healthy, a safety violation, or
// timeout; it returns how long recovery took.
func (c *tnet) settle(timeout time.Duration, o checkOpts) (time.Duration, error) {
	start := time.Now()
	var why string
	for {
		w, fatal := c.check(o)
		if fatal != nil {
			return time.Since(start), fmt.Errorf("SAFETY: %w", fatal)
		}
		if w == "" {
			return time.Since(start), nil
		}
		why = w
		if time.Since(start) > timeout {
			return time.Since(start), fmt.Errorf("%w within %v: %s", errNotRecovered, timeout, why)
		}
		time.Sleep(100 * time.Millisecond) // pacing between polls of an observable condition
	}
}

var errNotRecovered = errors.New("not recovered")

func deref(p *uint64) any {
	if p == nil {
		return "none"
	}
	return *p
}

func short(id string) string {
	if len(id) > 16 {
		return id[:6] + "…" + id[len(id)-6:]
	}
	return id
}
